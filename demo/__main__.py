"""`python -m demo ...`: the whole `refit` CLI, demo included, without relying on installed entry points."""

from demo.cli import register as register_demo
from monitoring.cli import register as register_monitoring
from monitoring.feedback_cli import register as register_feedback
from service.cli import register as register_service
from training.cli import app, main

register_service(app)
register_monitoring(app)
register_feedback(app)
register_demo(app)
main(plugins=False)
