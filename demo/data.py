"""A generated support-ticket dataset for the demo, with drifted variants for monitoring.

Ten intents of a fictional SaaS company ("Northwind Cloud"), written from templates with
slots, varied openings and sign-offs, casing and punctuation noise, a few typos and a little
label noise, so that no strategy scores a perfect 1.0. The drifted files bring what production
traffic brings later: intents never trained on, heavy typos, and product names never seen.
"""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

PRODUCTS = [
    "Northwind Drive",
    "Northwind Mail",
    "Northwind Sheets",
    "the mobile app",
    "the desktop app",
]
NEW_PRODUCTS = ["Northwind Vault", "Northwind Meet", "Northwind AI Copilot", "the smartwatch app"]
PLANS = ["Basic", "Pro", "Business", "Enterprise"]

INTENTS: dict[str, list[str]] = {
    "refund_request": [
        "I cancelled my {plan} plan last week, where is my refund?",
        "the invoice for ${amount} is wrong, I want that money back",
        "my card was charged after the trial, I need it reversed",
        "billing problem, I paid for {product} twice",
        "charged again?? give me my money back",
        "I was charged twice for {product} this month, please refund one payment",
        "Can I get my money back for the {plan} plan? I cancelled within the trial",
        "please refund the ${amount} you took from my card on {date}",
        "I want a refund for {product}, it never worked for me",
        "You billed me ${amount} after I cancelled. I expect a full refund",
        "how long does a refund take to show up on my statement?",
        "Refund my last invoice please, I was not supposed to be charged",
        "the annual renewal of ${amount} was a mistake, can you reverse it",
    ],
    "password_reset": [
        "I cannot log in, I think I typed the wrong password too often",
        "login problem with {product}, need a new password",
        "my password does not work since {date}",
        "help me get back into my account, I forgot the password",
        "I forgot my password and the reset email never arrives",
        "how do I reset my password for {product}?",
        "The password reset link says it has expired",
        "can't remember my password, need to change it",
        "reset password not working on {product}",
        "I changed my password yesterday and now it is not accepted",
        "where is the forgot password button in {product}",
        "the reset code you sent me is invalid",
    ],
    "account_locked": [
        "I cannot log in to {product} even with the right password",
        "login problem: it says account locked",
        "my account was frozen after I changed my password",
        "help me get back into my account, it is blocked",
        "My account is locked after too many login attempts",
        "I am locked out of {product}, it says my account is suspended",
        "why was my account disabled? I did nothing wrong",
        "two-factor code lost, now I cannot log in at all",
        "it says too many failed attempts, please unlock my account",
        "my login is blocked since {date}, help",
        "account suspended for suspicious activity but it was me",
    ],
    "cancel_subscription": [
        "I do not want to pay for {product} anymore, stop the billing",
        "please end my plan, no refund needed",
        "downgrade me to free and stop charging my card",
        "close my account and delete the {plan} subscription",
        "Please cancel my {plan} subscription effective immediately",
        "how do I cancel my subscription to {product}?",
        "I want to stop my plan and close my account",
        "cancel the auto renewal, I don't want to be billed again",
        "we are moving to another provider, cancel our {plan} contract",
        "Where is the cancel button? I want to unsubscribe",
        "terminate my subscription at the end of the billing period",
    ],
    "upgrade_plan": [
        "our team grew, we need a bigger plan",
        "the {plan} limits are too small for us, what are the options",
        "billing question: price of {plan2} for 50 users",
        "we want more features than {plan} has",
        "We would like to upgrade from {plan} to {plan2}",
        "what does the {plan2} plan include compared to {plan}?",
        "how much is it to add 10 more seats to our {plan} plan",
        "I need more storage in {product}, which plan should I buy",
        "upgrade my account to {plan2} please",
        "can we switch to annual billing on the {plan2} tier",
        "is there a discount if we upgrade the whole team to {plan2}",
    ],
    "bug_report": [
        "{product} is not working properly since {date}",
        "something is wrong with {product}, the files disappear",
        "I get an error when I connect {product} to my calendar",
        "the app keeps logging me out every minute",
        "{product} crashes every time I open a file",
        "The sync in {product} is broken since the last update",
        "I get an error 500 when saving in {product}",
        "{product} freezes when I upload files larger than 2 GB",
        "buttons do nothing in {product} after the update on {date}",
        "found a bug: search in {product} returns no results",
        "the export to PDF in {product} produces a blank page",
        "{product} shows a white screen on startup",
    ],
    "invoice_request": [
        "billing question: can I get the invoices by email every month",
        "the invoice shows a charge I do not understand, send me the details",
        "I need the invoice before we can pay the ${amount}",
        "please resend my last bill",
        "Please send me the invoice for {date}",
        "I need a VAT invoice for our {plan} subscription",
        "where can I download my invoices?",
        "can you add our company address to the invoice",
        "the invoice for ${amount} is missing our tax number",
        "send a copy of all invoices from last year to accounting",
        "I need a receipt for the ${amount} payment",
    ],
    "shipping_delay": [
        "still waiting for my order, it is very late",
        "my package is missing, the courier lost it",
        "order #{order} is stuck in customs",
        "you charged me ${amount} but the device never shipped",
        "my hardware key has not arrived yet, ordered on {date}",
        "where is my order #{order}? it has been two weeks",
        "the tracking number for order #{order} does not work",
        "delivery of the security key is late, any update?",
        "I ordered the {product} starter kit and it never came",
        "package #{order} shows delivered but I did not receive it",
        "when will my order ship? still says processing",
    ],
    "data_privacy": [
        "is my data safe if I cancel my account?",
        "delete my account and all the data in it",
        "who has access to my {product} account data",
        "I want to know what you log when I use {product}",
        "please delete all my personal data from {product}",
        "I want a copy of all the data you hold about me (GDPR request)",
        "who can see the files I store in {product}?",
        "do you sell my data to third parties?",
        "where are your servers located, is my data stored in the EU",
        "I want to opt out of analytics tracking in {product}",
        "remove my email from all your marketing lists and databases",
    ],
    "integration_help": [
        "{product} does not sync with my calendar, how do I set it up",
        "how can I connect my account to our CRM",
        "the API returns an error when I connect {product}",
        "help setting up {product} with our login provider",
        "how do I connect {product} to Slack?",
        "the Zapier integration with {product} stopped working",
        "is there an API to import contacts into {product}",
        "How can I sync {product} with Google Calendar",
        "our SSO with Okta fails for {product}",
        "webhooks from {product} are not reaching our server",
        "can I use {product} with Microsoft Teams",
    ],
}

NEW_INTENTS: dict[str, list[str]] = {
    "ai_feature_question": [
        "how do I turn on the AI assistant in {product}?",
        "the AI summary in {product} is wrong, can I turn it off",
        "does the Copilot read my private documents?",
        "what languages does the AI writing helper support",
        "AI suggestions are slow today in {product}",
    ],
    "outage_report": [
        "is {product} down? nothing loads for anyone in our office",
        "service outage since 9am, all our users are affected",
        "status page says operational but {product} is completely down",
        "we cannot reach any of your servers, is there an outage",
        "total outage in Europe for {product}?",
    ],
}

OPENINGS = [
    "",
    "",
    "",
    "Hi, ",
    "Hello team, ",
    "hey ",
    "Good morning. ",
    "URGENT: ",
    "Quick question: ",
    "I have a problem with my account. ",
    "Billing and login question. ",
    "Following up on my last ticket: ",
]
CLOSINGS = [
    "",
    "",
    "",
    " Thanks.",
    " thank you!",
    " Regards, Sam",
    " asap please",
    " Cheers",
    "!!",
    " I already tried logging out and in again.",
    " This is the third time I write about my bill.",
]


def _fill(template: str, rng: random.Random, products: list[str]) -> str:
    plan, plan2 = rng.sample(PLANS, 2)
    return template.format(
        product=rng.choice(products),
        plan=plan,
        plan2=plan2,
        amount=rng.choice([9, 12, 29, 49, 99, 199, 480]),
        date=rng.choice(["March 3", "last Friday", "the 14th", "2026-10-01", "yesterday"]),
        order=rng.randint(10000, 99999),
    )


def add_typos(text: str, rng: random.Random, rate: float) -> str:
    """Swap, drop or double letters in about ``rate`` of the words."""
    words = text.split(" ")
    for i, word in enumerate(words):
        if len(word) > 3 and rng.random() < rate:
            j = rng.randrange(1, len(word) - 1)
            kind = rng.choice(("swap", "drop", "double"))
            if kind == "swap":
                word = word[: j - 1] + word[j] + word[j - 1] + word[j + 1 :]
            elif kind == "drop":
                word = word[:j] + word[j + 1 :]
            else:
                word = word[:j] + word[j] + word[j:]
            words[i] = word
    return " ".join(words)


def _style(text: str, rng: random.Random) -> str:
    text = rng.choice(OPENINGS) + text + rng.choice(CLOSINGS)
    roll = rng.random()
    if roll < 0.15:
        text = text.lower()
    elif roll < 0.2:
        text = text.upper()
    return text


def generate_tickets(
    n: int,
    seed: int,
    *,
    intents: dict[str, list[str]] | None = None,
    products: list[str] | None = None,
    typo_rate: float = 0.05,
    label_noise: float = 0.03,
) -> pd.DataFrame:
    """``n`` tickets (columns ``text``, ``label``) spread evenly-ish over ``intents``."""
    rng = random.Random(seed)
    intents = intents or INTENTS
    products = products or PRODUCTS
    names = sorted(intents)
    rows = []
    for _ in range(n):
        label = rng.choice(names)
        text = _style(_fill(rng.choice(intents[label]), rng, products), rng)
        text = add_typos(text, rng, typo_rate)
        if rng.random() < label_noise:
            label = rng.choice(names)
        rows.append({"text": text, "label": label})
    return pd.DataFrame(rows)


def write_demo_data(directory: Path, seed: int = 7, rows: int = 1200) -> dict[str, Path]:
    """Write the training set, in-distribution traffic and three drifted traffic files.

    Returns:
        The path of each file by name: ``train``, ``traffic``, ``drift_new_intents``,
        ``drift_typos``, ``drift_new_products``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    frames = {
        "train": generate_tickets(rows, seed),
        "traffic": generate_tickets(rows // 2, seed + 1),
        "drift_new_intents": pd.concat(
            [
                generate_tickets(rows // 4, seed + 2),
                generate_tickets(rows // 4, seed + 3, intents=NEW_INTENTS),
            ]
        ).sample(frac=1.0, random_state=seed),
        "drift_typos": generate_tickets(rows // 2, seed + 4, typo_rate=0.4),
        "drift_new_products": generate_tickets(rows // 2, seed + 5, products=NEW_PRODUCTS),
    }
    paths = {}
    for name, frame in frames.items():
        paths[name] = directory / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    return paths
