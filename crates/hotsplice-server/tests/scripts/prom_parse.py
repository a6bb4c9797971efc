"""Parse Prometheus text (stdin) with prometheus_client's own parser and
print the samples as JSON: [[name, {labels}, value], ...]."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append([s.name, s.labels, s.value])
json.dump(out, sys.stdout)
