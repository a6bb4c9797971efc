"""Validate CSAF documents (files named on the command line) against the
CSAF 2.0 JSON schema (first argument), with the jsonschema package; exit 1
with the errors when one does not validate."""
import json
import sys

import jsonschema

schema = json.load(open(sys.argv[1]))
validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())
bad = 0
for path in sys.argv[2:]:
    doc = json.load(open(path))
    for e in validator.iter_errors(doc):
        bad += 1
        print(f"{path}: {'/'.join(str(p) for p in e.absolute_path)}: {e.message}")
print(f"checked {len(sys.argv) - 2} documents, {bad} errors")
sys.exit(1 if bad else 0)
