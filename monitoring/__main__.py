"""`python -m monitoring ...`: the whole `refit` CLI without relying on installed entry points.

A Bento image carries the source but does not pip-install the project, so the ``refit`` script
and its ``refit.cli`` entry points are absent there; the monitor's container runs this instead.
"""

from monitoring.cli import register as register_monitoring
from monitoring.feedback_cli import register as register_feedback
from service.cli import register as register_service
from training.cli import app, main

register_service(app)
register_monitoring(app)
register_feedback(app)
main(plugins=False)
