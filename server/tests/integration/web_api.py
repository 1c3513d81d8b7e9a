"""REST API and metrics checks for web_ui.rs, with real parsers.

  web_api.py metrics URL
      Parses /metrics with the Prometheus client's OpenMetrics parser; prints every sample as
      one JSON object {"name{label="value",...}": value} (labels sorted by name).
  web_api.py validate BASE_URL OPENAPI_JSON QUERY_ID
      Checks the answers of every REST route against the OpenAPI document's schemas.
"""

import json
import sys
import urllib.error
import urllib.request

import jsonschema
from prometheus_client.openmetrics.parser import text_string_to_metric_families


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode()


def metrics(url):
    status, headers, text = get(url)
    assert status == 200, (status, text)
    assert headers["Content-Type"].startswith("application/openmetrics-text"), headers
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[sample.name + ("{" + labels + "}" if labels else "")] = sample.value
    print(json.dumps(samples))


def validate(base, openapi_path, query_id):
    document = json.load(open(openapi_path))

    def check(path, status, expected_status=200):
        operation_path = path.split("?")[0]
        template = {
            f"/api/v1/queries/{query_id}": "/api/v1/queries/{id}",
            "/api/v1/queries/0123456789abcdef": "/api/v1/queries/{id}",
        }.get(operation_path, operation_path)
        code, _, body = get(base + path)
        assert code == expected_status, (path, code, body)
        response = document["paths"][template]["get"]["responses"][str(code)]
        schema = response["content"]["application/json"]["schema"]
        wrapped = dict(schema)
        wrapped["components"] = document["components"]
        jsonschema.Draft202012Validator(wrapped).validate(json.loads(body))
        return json.loads(body)

    queries = check("/api/v1/queries", 200)
    assert any(q["query_id"] == query_id for q in queries)
    detail = check(f"/api/v1/queries/{query_id}", 200)
    assert detail["stages"], detail
    check("/api/v1/queries/0123456789abcdef", 404, 404)
    executors = check("/api/v1/executors", 200)
    allocations = check("/api/v1/allocations", 200)
    # Executors started by hand have no allocation; an allocation that registered is an executor.
    registered = {e["allocation_id"] for e in executors if e["allocation_id"]}
    assert not registered & {a["allocation_id"] for a in allocations}, (executors, allocations)
    cluster = check("/api/v1/cluster", 200)
    assert cluster["configuration"]["http"]["refresh_ms"] >= 200
    code, _, body = get(base + "/api/v1/openapi.json")
    assert code == 200 and json.loads(body) == document, "served document differs from docs/"
    print("ok")


if sys.argv[1] == "metrics":
    metrics(sys.argv[2])
elif sys.argv[1] == "validate":
    validate(sys.argv[2], sys.argv[3], sys.argv[4])
else:
    sys.exit(f"unknown command {sys.argv[1]}")
