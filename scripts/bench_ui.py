"""Runs `ember bench tpch` with the web UI open and refreshing in headless Chromium.

    target/test-venv/bin/python scripts/bench_ui.py --ember target/release/ember --scale 1

The benchmark prints its web UI address; a browser (selenium, Debian's chromium) opens the page
of each query as it starts and keeps it open, refreshing every `http.refresh_ms`, until the
query ends, then goes back to the query list. Compare its table with a plain
`ember bench tpch` run on the same data: the UI's cost is the difference.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

parser = argparse.ArgumentParser()
parser.add_argument("--ember", default="target/release/ember")
parser.add_argument("--scale", default="1")
parser.add_argument("--iterations", default="3")
args = parser.parse_args()

bench = subprocess.Popen(
    [args.ember, "bench", "tpch", "--scale", args.scale, "--iterations", args.iterations],
    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
)
url = None
for line in bench.stderr:
    sys.stderr.write(line)
    match = re.search(r"web UI at (http://\S+)", line)
    if match:
        url = match.group(1).rstrip("/")
        break
if url is None:
    sys.exit("the benchmark printed no web UI address")
threading.Thread(target=lambda: [sys.stderr.write(l) for l in bench.stderr], daemon=True).start()

options = webdriver.ChromeOptions()
options.binary_location = os.environ.get("EMBER_TEST_CHROMIUM", "/usr/bin/chromium")
for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--window-size=1440,1800"):
    options.add_argument(flag)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
pages = 0
stop = threading.Event()


def follow():
    global pages
    shown = None
    driver.get(url + "/#/queries")
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url + "/api/v1/queries?state=running&limit=1", timeout=5) as r:
                running = json.load(r)
        except Exception:
            break
        if running and running[0]["query_id"] != shown:
            shown = running[0]["query_id"]
            driver.get(url + f"/#/query/{shown}")
            pages += 1
        time.sleep(0.5)


follower = threading.Thread(target=follow, daemon=True)
follower.start()
out = bench.stdout.read()
bench.wait()
stop.set()
follower.join(timeout=5)
driver.quit()
print(out)
print(f"(web UI open on {pages} query pages while it ran)")
sys.exit(bench.returncode)
