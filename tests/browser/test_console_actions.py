"""What a person does in the console, in a real browser: replay a failed delivery,
retry a pending one now, write a new webhook with the form and take its YAML to
`reconciler validate`, use the sign-in form from the keyboard, read the webhooks on
a phone. And what a forged request cannot do: a POST without the form's CSRF token
is refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from playwright.sync_api import expect

from tests.browser.conftest import SLACK_PATH, Console, Session
from tests.support.helpers_state import run_cli
from tests.support.receiver import ok, status
from tests.support.serve_process import eventually

# The product page's example body, in its relaxed JSON form.
RELAXED_BODY = (
    "{ text: 'The rule {{name}} was violated at: {{time}}. Description {{description}}.' }"
)


def attempts_of(console: Console, delivery_id: str) -> list[dict[str, Any]]:
    delivery = console.api("GET", f"/v1/deliveries/{delivery_id}")
    found: list[dict[str, Any]] = delivery["attempts_log"]
    return found


def test_an_admin_replays_a_failed_delivery_and_sees_the_new_attempt(
    session: Session, console: Console, failed_delivery: str
) -> None:
    page = session.sign_in("acme-admin")
    page.goto(f"/ui/deliveries/{failed_delivery}")
    attempts = page.get_by_role("main").locator("table").last.locator("tbody tr")
    expect(attempts).to_have_count(1)
    page.get_by_role("button", name="Replay").click()
    expect(page.get_by_role("status")).to_contain_text("Queued again")
    # The receiver answers 200 now. Once the dispatcher has sent it again, the
    # delivery's page, reloaded, shows the new attempt.
    eventually(
        lambda: len(attempts_of(console, failed_delivery)) == 2,
        "the replayed delivery's second attempt",
        console.server,
    )
    page.goto(f"/ui/deliveries/{failed_delivery}")
    expect(attempts).to_have_count(2)
    expect(attempts.nth(1)).to_contain_text("200")
    session.shoot("delivery-replayed")
    assert [a["status"] for a in attempts_of(console, failed_delivery)] == [400, 200]


def test_an_admin_retries_a_backing_off_delivery_now(session: Session, console: Console) -> None:
    """The receiver answers 503 twice: after its second attempt the delivery waits
    out the schedule's 5 minutes, pending. Retry now makes it due at once."""
    console.receiver.script(SLACK_PATH, status(503), status(503))
    try:
        event_id = console.fire("reserved_instance_surplus", "rule-retry-now")
        delivery = eventually(
            lambda: next(
                (
                    d
                    for d in console.api("GET", f"/v1/deliveries?org=acme&event_id={event_id}")[
                        "deliveries"
                    ]
                    if d["attempts"] == 2 and d["status"] == "pending"
                ),
                None,
            ),
            "the delivery backing off after two 503s",
            console.server,
        )
    finally:
        console.receiver.script(SLACK_PATH, ok())
    delivery_id = delivery["id"]
    page = session.sign_in("acme-admin")
    page.goto(f"/ui/deliveries/{delivery_id}")
    expect(page.locator("#delivery-status")).to_contain_text("pending, due")
    expect(page.get_by_role("button", name="Replay")).to_have_count(0)
    page.get_by_role("button", name="Retry now").click()
    expect(page.get_by_role("status")).to_contain_text("Due now")
    eventually(
        lambda: console.api("GET", f"/v1/deliveries/{delivery_id}")["status"] == "delivered",
        "the retried delivery sent at once",
        console.server,
    )
    assert [a["status"] for a in attempts_of(console, delivery_id)] == [503, 503, 200]


def test_a_post_without_the_csrf_token_is_refused(
    session: Session, console: Console, failed_delivery: str
) -> None:
    """The session cookie alone does not make a POST: the replay form's hidden
    csrf_token (or the script's X-CSRF-Token header) must come with it."""
    page = session.sign_in("acme-admin")
    page.goto(f"/ui/deliveries/{failed_delivery}")
    token = session.csrf_token()
    url = f"/ui/deliveries/{failed_delivery}/replay"
    missing = page.request.post(url, form={}, max_redirects=0)
    assert missing.status == 403, missing.status
    wrong = page.request.post(url, form={"csrf_token": token[::-1]}, max_redirects=0)
    assert wrong.status == 403, wrong.status
    assert len(attempts_of(console, failed_delivery)) == 1
    assert console.api("GET", f"/v1/deliveries/{failed_delivery}")["status"] == "failed"
    # The form's check as you type takes it in a header: without it, no answer.
    check = page.request.post("/ui/new/check", form={"name": "x", "body": "{}"})
    assert check.status == 403, check.status
    # Nor does a sign-out without it end the session.
    assert page.request.post("/ui/sign-out", form={}, max_redirects=0).status == 403
    assert session.open("/ui/webhooks").status == 200
    expect(page).to_have_url(re.compile(r"/ui/webhooks$"))


def fill_new_webhook(page: Any, name: str, body: str) -> None:
    page.goto("/ui/new")
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Endpoint (target URL)").fill(
        "https://hooks.slack.example/services/T000/B000"
    )
    page.get_by_label("Body").fill(body)


def test_the_new_webhook_form_turns_relaxed_json_into_a_file_validate_accepts(
    session: Session, tmp_path: Path
) -> None:
    page = session.sign_in("acme-admin")
    fill_new_webhook(page, "slack-violations", "")
    page.get_by_label("Body").press_sequentially(RELAXED_BODY)
    output = page.get_by_label("YAML file")
    expect(output).to_have_value(re.compile(r"^name: slack-violations$", re.MULTILINE))
    expect(output).to_have_value(re.compile(r"The rule \{\{name\}\} was violated"))
    expect(page.get_by_role("alert")).to_have_text("")
    session.shoot("new-yaml")
    text = output.input_value()

    with page.expect_download() as downloading:
        page.get_by_role("link", name="Download").click()
    downloaded = Path(downloading.value.path()).read_text(encoding="utf-8")
    assert downloaded.strip() == text.strip()
    assert downloading.value.suggested_filename == "slack-violations.yaml"

    folder = tmp_path / "webhooks.d" / "acme"
    folder.mkdir(parents=True)
    (folder / "slack-violations.yaml").write_text(downloaded, encoding="utf-8")
    checked = run_cli(["validate", "webhooks.d"], tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    data = yaml.safe_load(downloaded)
    assert data["body"] == {
        "text": "The rule {{name}} was violated at: {{time}}. Description {{description}}."
    }


def test_a_broken_body_shows_where_it_breaks_while_typing(session: Session) -> None:
    page = session.sign_in("acme-admin")
    fill_new_webhook(page, "slack-broken", "")
    # Line 2 misses the comma after the first value.
    page.get_by_label("Body").press_sequentially("{\n  text: 'a'\n  more: 'b'\n}")
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text(re.compile(r"line 3|3:3|3, column"))
    session.shoot("new-broken-body")
    page.get_by_label("Body").fill(RELAXED_BODY)
    page.get_by_label("Body").press("End")
    expect(alert).to_have_text("")


def test_the_sign_in_form_works_from_the_keyboard(session: Session, console: Console) -> None:
    page = session.page
    page.goto("/ui/sign-in")
    field = page.get_by_label("API token")
    for _ in range(10):
        if field.evaluate("e => e === document.activeElement"):
            break
        page.keyboard.press("Tab")
    expect(field).to_be_focused()
    page.keyboard.type(console.tokens["acme-auditor"])
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Sign in")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/ui/webhooks$"))


def test_the_webhooks_page_fits_a_phone(phone: Session) -> None:
    page = phone.sign_in("acme-admin")
    expect(page).to_have_url(re.compile(r"/ui/webhooks$"))
    expect(page.get_by_role("link", name="slack-ri-surplus")).to_be_visible()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"], width
    phone.shoot("webhooks-phone")


def test_without_javascript_the_check_button_gives_the_same_file(
    browser: Any, console: Console, screenshots: Path
) -> None:
    """The form is usable with scripts off: Check posts it, and the answer is the page
    with the file, as the script would have shown it."""
    session = Session(browser, console, screenshots, java_script_enabled=False)
    try:
        page = session.sign_in("acme-admin")
        fill_new_webhook(page, "slack-violations", RELAXED_BODY)
        page.get_by_role("button", name="Check").click()
        output = page.get_by_label("YAML file")
        expect(output).to_have_value(re.compile(r"^name: slack-violations$", re.MULTILINE))
        expect(page.get_by_role("link", name="Download")).to_be_visible()
        fill_new_webhook(page, "slack-broken", "{ text: 'a' more: 'b' }")
        page.get_by_role("button", name="Check").click()
        expect(page.get_by_role("alert")).to_contain_text("line 1, column 13")
        expect(output).to_have_value("")
    finally:
        session.close()
