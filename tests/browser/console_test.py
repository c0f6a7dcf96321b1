"""The admin console in a real browser: Debian's Chromium, driven by Playwright.

Run by `tests/it/console.rs`, which starts a local stack, makes the tasks this
script looks at and passes them in the environment:

  COURIER_URL          the API's base URL (loopback)
  COURIER_ADMIN_KEY    the admin key
  COURIER_TENANT       the tenant the tasks belong to (tnt_…)
  COURIER_TENANT_KEY   that tenant's key
  COURIER_FAILED_TASK  a task that failed (its target answers 200 from now on)
  COURIER_FAILED_BID   that task's business id
  COURIER_XSS_TASK     a delivered task whose request and response hold markup
  COURIER_LATER_TASK   a task scheduled an hour ahead (to a .invalid host)
  COURIER_TARGET_HOST  the host:port both tasks were sent to
  COURIER_SHOTS        where to write the screenshots
  COURIER_CHROMIUM     the browser (default: chromium on PATH)

Fails (exit 1) on any failed check, any JavaScript error or console error,
and any failed or refused request the page made.
"""

import os
import re
import shutil
import sys
import time

from playwright.sync_api import expect, sync_playwright

URL = os.environ["COURIER_URL"].rstrip("/")
ADMIN_KEY = os.environ["COURIER_ADMIN_KEY"]
TENANT = os.environ["COURIER_TENANT"]
TENANT_KEY = os.environ["COURIER_TENANT_KEY"]
FAILED = os.environ["COURIER_FAILED_TASK"]
FAILED_BID = os.environ["COURIER_FAILED_BID"]
XSS = os.environ["COURIER_XSS_TASK"]
LATER = os.environ["COURIER_LATER_TASK"]
TARGET_HOST = os.environ["COURIER_TARGET_HOST"]
SHOTS = os.environ["COURIER_SHOTS"]
CHROMIUM = os.environ.get("COURIER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

# No network but loopback: Chromium's own background traffic stays off.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
]

problems = []


def step(text):
    print(f"browser: {text}", flush=True)


def watch(page):
    page.on("pageerror", lambda e: problems.append(f"JavaScript error: {e}"))
    page.on(
        "console",
        lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None,
    )
    # A request cut off by the test's own navigation (a reload, a new page
    # load) is not a failure of the console; any other network failure is.
    page.on(
        "requestfailed",
        lambda r: None if r.failure == "net::ERR_ABORTED" else problems.append(f"request failed: {r.method} {r.url} {r.failure}"),
    )
    page.on(
        "response",
        lambda r: problems.append(f"HTTP {r.status}: {r.request.method} {r.url}") if r.status >= 400 else None,
    )


def sign_in_by_keyboard(page, key):
    """Signs in with the keyboard only: Tab to the key field, type, Enter."""
    page.goto(f"{URL}/admin")
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("#key")).to_be_focused()
    page.keyboard.type(key)
    page.keyboard.press("Enter")
    expect(page.locator("#overview")).to_be_visible()


def status_of(page):
    return page.locator("#detail-body h1 .badge").get_attribute("data-status")


def main():
    os.makedirs(SHOTS, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        ctx = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
        # Nothing but this origin: any other request is a failure.
        ctx.route(re.compile(r"^(?!" + re.escape(URL) + r"/).*"), lambda r: (problems.append(f"off-origin request {r.request.url}"), r.abort()))
        page = ctx.new_page()
        watch(page)

        step("the page is served with its security headers")
        resp = page.goto(f"{URL}/admin")
        csp = resp.headers.get("content-security-policy", "")
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp, csp

        step("admin signs in with the keyboard and picks the tenant")
        sign_in_by_keyboard(page, ADMIN_KEY)
        expect(page.locator("#who")).to_have_text("admin")
        page.select_option("#tenant-select", TENANT)
        assert page.evaluate("sessionStorage.getItem('courier.tenant')") == TENANT
        assert page.evaluate("localStorage.length") == 0, "nothing in localStorage"

        step("the overview counts, queues and chart")
        expect(page.locator('[data-count="failed"] strong')).to_have_text("1", timeout=20_000)
        expect(page.locator('[data-count="succeeded"] strong')).to_have_text("1", timeout=20_000)
        expect(page.locator('[data-queue="dlq"] strong')).to_have_text(re.compile(r"^\d+$"))
        expect(page.locator("svg#activity polyline")).to_have_count(3)
        expect(page.locator('[data-total="delivered"]')).to_have_text("Deliveries: 1")
        expect(page.locator('[data-total="failed"]')).to_have_text("Failures: 1")
        page.screenshot(path=f"{SHOTS}/overview.png", full_page=True)

        step("filter to failed from the counts; the filter is in the URL")
        page.click('[data-count="failed"]')
        expect(page.locator("#list")).to_be_visible()
        assert "status=failed" in page.url, page.url
        rows = page.locator("#tasks tbody tr")
        expect(rows).to_have_count(1)
        expect(rows.first).to_have_attribute("data-id", FAILED)
        expect(rows.first.locator(".badge")).to_have_text("failed")
        expect(rows.first.locator("td").nth(4)).to_have_text("1/1")
        expect(rows.first.locator("td").nth(1)).to_have_text("POST")
        expect(rows.first.locator(".trunc")).to_have_attribute("title", re.compile(re.escape(TARGET_HOST) + "/fail"))
        page.screenshot(path=f"{SHOTS}/list.png", full_page=True)
        shared = page.url
        page.reload()
        expect(page.locator("#tasks tbody tr")).to_have_count(1)
        assert page.url == shared
        expect(page.locator("#f-status")).to_have_value("failed")

        step("the filters: host, business id, then clear")
        page.fill("#f-host", TARGET_HOST.split(":")[0])
        page.select_option("#f-status", "")
        page.click("#filters button[type=submit]")
        expect(page.locator("#tasks tbody tr")).to_have_count(2)
        assert "host=" in page.url
        page.fill("#f-bid", FAILED_BID)
        page.click("#filters button[type=submit]")
        expect(page.locator("#tasks tbody tr")).to_have_count(1)
        expect(page.locator("#tasks tbody tr")).to_have_attribute("data-id", FAILED)
        page.click("#f-clear")
        expect(page.locator("#tasks tbody tr")).to_have_count(3)

        step("open the failed task, expand its attempt's response")
        page.goto(f"{URL}/admin#/tasks?status=failed")
        page.click(f'a[href="#/task/{FAILED}"]')
        expect(page.locator("#detail")).to_be_visible()
        expect(page.locator("#task-id")).to_have_text(FAILED)
        expect(page.locator("#failure-reason")).to_contain_text("500")
        attempt = page.locator('#attempts tr[data-attempt="1"]')
        expect(attempt).to_have_count(1)
        response = attempt.locator("details").nth(1)
        expect(response.locator("pre")).not_to_be_visible()
        response.locator("summary").click()
        expect(response.locator("pre")).to_be_visible()
        expect(response.locator("pre")).to_have_text("answer 500")
        page.screenshot(path=f"{SHOTS}/detail.png", full_page=True)

        step("retry it (confirmed first) and see its status change")
        page.click("#retry")
        expect(page.locator("#confirm")).to_be_visible()
        expect(page.locator("#confirm-text")).to_contain_text(FAILED)
        page.click("#confirm-yes")
        expect(page.locator("#notice")).to_have_text("Done.")
        assert status_of(page) != "failed", status_of(page)
        deadline = time.time() + 30
        while status_of(page) != "succeeded":
            assert time.time() < deadline, f"the retried task is still {status_of(page)}"
            time.sleep(0.5)
            page.click("#refresh")
            expect(page.locator("#detail")).to_be_visible()
        expect(page.locator("#attempts > tbody > tr")).to_have_count(2)

        step("cancel the scheduled task (confirmed first); declining changes nothing")
        page.goto(f"{URL}/admin#/task/{LATER}")
        expect(page.locator("#task-id")).to_have_text(LATER)
        assert status_of(page) == "scheduled", status_of(page)
        page.click("#cancel")
        page.click("#confirm-no")
        expect(page.locator("#confirm")).to_be_hidden()
        assert status_of(page) == "scheduled", "declined: still scheduled"
        page.click("#cancel")
        expect(page.locator("#confirm-text")).to_contain_text("will not be sent")
        page.click("#confirm-yes")
        expect(page.locator("#detail-body h1 .badge")).to_have_attribute("data-status", "cancelled")
        expect(page.locator("#cancel")).to_have_count(0)

        step("a task whose request and response hold markup renders as text")
        page.goto(f"{URL}/admin#/task/{XSS}")
        expect(page.locator("#task-id")).to_have_text(XSS)
        page.locator("details:has(> summary:text-is('Body')) > summary").click()
        expect(page.locator("#task-body")).to_have_text(re.compile(r"^<script>window.__xss=1</script>"))
        attempt = page.locator('#attempts tr[data-attempt="1"]')
        attempt.locator("details").nth(1).locator("summary").click()
        expect(attempt.locator("pre")).to_contain_text("<img src=x onerror=")
        expect(page.locator("#detail-body")).to_contain_text("<b>header</b>")
        assert page.evaluate("window.__xss") is None, "task data ran as script"
        assert page.evaluate("document.scripts.length") == 1, "only the console's own script"
        assert page.locator("#detail-body img, #detail-body b, #detail-body script").count() == 0
        page.screenshot(path=f"{SHOTS}/xss.png", full_page=True)

        step("phone width: nothing overflows the page")
        page.set_viewport_size({"width": 390, "height": 844})
        for view in ["#/", "#/tasks", f"#/task/{FAILED}"]:
            page.goto(f"{URL}/admin{view}")
            page.wait_for_timeout(300)
            width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert width[0] <= width[1], f"{view} is {width[0]} px wide at {width[1]} px"
        page.screenshot(path=f"{SHOTS}/phone-detail.png", full_page=True)
        page.set_viewport_size({"width": 1280, "height": 900})

        step("sign out forgets the key")
        page.goto(f"{URL}/admin#/")
        page.click("#signout")
        expect(page.locator("#signin")).to_be_visible()
        assert page.evaluate("sessionStorage.length") == 0

        step("a tenant's key sees its own tasks and no queue depths")
        sign_in_by_keyboard(page, TENANT_KEY)
        expect(page.locator("#who")).to_contain_text(TENANT)
        expect(page.locator("#tenant-box")).to_be_hidden()
        expect(page.locator('[data-count="succeeded"] strong')).to_have_text("2", timeout=20_000)
        expect(page.locator("#queues")).to_contain_text("shown to the admin key")
        page.click("#signout")

        browser.close()
    if problems:
        print("browser: problems:\n  " + "\n  ".join(problems), file=sys.stderr)
        sys.exit(1)
    print(f"browser: all checks passed; screenshots in {SHOTS}")


if __name__ == "__main__":
    main()
