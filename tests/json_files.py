"""Editing a JSON file in place, as someone tampering with an export or an index would."""

import json


def edit_json(path, change):
    """Loads `path`, applies `change(value)` (which mutates it) and writes it back."""
    with open(path) as f:
        value = json.load(f)
    change(value)
    with open(path, "w") as f:
        json.dump(value, f)
    return value
