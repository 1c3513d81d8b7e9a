"""Drives Ember's web UI in headless Chromium (selenium + chromedriver), for web_ui.rs.

Arguments: a JSON object with base_url, finished (query id, stages, tasks), long (query id),
executors (expected live count) and screenshots (a directory); with "history": true, only the
finished query is looked at (after a restart, from the event log) and the screenshots are named
history-*. Prints what it saw as one JSON line; any failed check raises, so the process exits
non-zero with the reason.
"""

import json
import os
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.support.ui import WebDriverWait

args = json.loads(sys.argv[1])
base = args["base_url"]
shots = args["screenshots"]
os.makedirs(shots, exist_ok=True)


def rest(path):
    with urllib.request.urlopen(base + "/api/v1" + path, timeout=10) as response:
        return json.load(response)


options = webdriver.ChromeOptions()
options.binary_location = os.environ.get("EMBER_TEST_CHROMIUM", "/usr/bin/chromium")
for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--window-size=1440,1800"):
    options.add_argument(flag)
service = Service(os.environ.get("EMBER_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
driver = webdriver.Chrome(service=service, options=options)
driver.set_page_load_timeout(30)
seen = {}


def wait(what, condition, timeout=20):
    try:
        # Pages re-render as they refresh: an element read while replaced is read again.
        return WebDriverWait(
            driver, timeout, poll_frequency=0.1,
            ignored_exceptions=(StaleElementReferenceException, NoSuchElementException),
        ).until(lambda d: condition())
    except Exception as error:
        driver.save_screenshot(os.path.join(shots, "failure.png"))
        raise AssertionError(f"timed out waiting for {what}") from error


history = args.get("history", False)


def shot(name):
    prefix = "history-" if history else ""
    driver.save_screenshot(os.path.join(shots, prefix + name + ".png"))


def check_finished_query():
    finished = args["finished"]
    # The query list shows the finished query.
    driver.get(base + "/#/queries")
    wait("the finished query in the list",
         lambda: driver.find_elements(By.CSS_SELECTOR, f'tr.query-row[data-query-id="{finished["id"]}"]'))
    wait("the finished query to show as succeeded", lambda: "succeeded" in driver.find_element(
        By.CSS_SELECTOR, f'tr.query-row[data-query-id="{finished["id"]}"]').text)
    seen["listed"] = True
    # Search narrows the list to it.
    box = driver.find_element(By.ID, "query-search")
    box.send_keys(finished["id"][:12])
    wait("the search to narrow the list",
         lambda: len(driver.find_elements(By.CSS_SELECTOR, "tr.query-row")) == 1)
    shot("queries")

    # Its page: one DAG node per stage, one row per task.
    driver.get(base + f'/#/query/{finished["id"]}')
    wait("the stage graph", lambda: len(driver.find_elements(By.CSS_SELECTOR, "svg.dag .stage-node")) > 0)
    wait("every task row",
         lambda: len(driver.find_elements(By.CSS_SELECTOR, "#tasks-table tr.task-row")) == finished["tasks"])
    # A finished query's page no longer refreshes, so its elements stay.
    wait("the page to settle", lambda: "final" in driver.find_element(By.ID, "live").text)
    nodes = driver.find_elements(By.CSS_SELECTOR, "svg.dag .stage-node")
    tasks = driver.find_elements(By.CSS_SELECTOR, "#tasks-table tr.task-row")
    assert len(nodes) == finished["stages"], (len(nodes), finished["stages"])
    assert len(tasks) == finished["tasks"], (len(tasks), finished["tasks"])
    assert driver.find_elements(By.CSS_SELECTOR, "svg.dag .stage-node.critical"), "no critical path"
    assert driver.find_elements(By.CSS_SELECTOR, "svg.timeline .task-bar"), "no timeline bars"
    assert driver.find_elements(By.CSS_SELECTOR, "#operators-table tr.operator-row"), "no operator metrics"
    seen["stage_nodes"] = len(nodes)
    seen["task_rows"] = len(tasks)
    shot("query")
    # Selecting a stage in the graph narrows the task table to it.
    nodes[0].click()
    first = nodes[0].get_attribute("data-stage-id")
    wait("the task table of one stage",
         lambda: driver.find_element(By.ID, "stage-select").get_attribute("value") == first
         and all(r.get_attribute("data-stage-id") == first
                 for r in driver.find_elements(By.CSS_SELECTOR, "#tasks-table tr.task-row")))



def check_live_pages():
    # A long query's progress moves while its page is open.
    long_id = args["long"]["id"]
    driver.get(base + f"/#/query/{long_id}")

    def done_tasks():
        text = driver.find_element(By.CSS_SELECTOR, "#summary .progress").get_attribute("title")
        return int(text.split("/")[0])

    # (A one-element list: zero tasks done is an answer too.)
    before = wait("the long query's progress", lambda: [done_tasks()])[0]
    wait("progress to move", lambda: done_tasks() > before, timeout=60)
    after = wait("the progress", lambda: [done_tasks()])[0]
    seen["progress"] = [before, after]
    shot("long-query-running")

    # The cancel button cancels it within 2 s.
    assert rest(f"/queries/{long_id}")["state"] == "running", "the long query ended by itself"
    wait("the cancel button", lambda: driver.find_element(By.ID, "cancel-query").click() or True)
    clicked = time.monotonic()
    while rest(f"/queries/{long_id}")["state"] != "cancelled":
        assert time.monotonic() - clicked < 2.0, "not cancelled within 2 s of the click"
        time.sleep(0.05)
    seen["cancel_seconds"] = round(time.monotonic() - clicked, 3)
    wait("the page to show it cancelled",
         lambda: "cancelled" in driver.find_element(By.ID, "summary").text)
    shot("long-query-cancelled")

    # Executors and cluster pages.
    driver.get(base + "/#/executors")
    wait("the executors", lambda: len(driver.find_elements(
        By.CSS_SELECTOR, "tr.executor-row .state-alive")) == args["executors"])
    shot("executors")
    driver.get(base + "/#/cluster")
    wait("the cluster page", lambda: driver.find_elements(By.CSS_SELECTOR, "#cluster-table"))
    wait("the sessions of the pgwire frontend", lambda: "pgwire" in driver.find_element(By.ID, "main").text)
    shot("cluster")


try:
    check_finished_query()
    if not history:
        check_live_pages()
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors
finally:
    driver.quit()

print(json.dumps(seen))
