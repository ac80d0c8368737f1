"""clickstream_plugin: helpers for a clickstream transform in Python
(contract clickstream:pipeline@0.2.0, world `transformer`), over the types
componentize-py generates from the WIT. `clickstream plugin new --lang
python` writes it beside app.py; the build bundles it.

    class WitWorld(Transformer):
        NAME = "sections"
        VERSION = "0.1.0"
        SETTINGS = {"home": "home", "max_depth": 2}

        def transform(self, batch):
            return [keep(event) for event in batch]
"""

from types import SimpleNamespace

import wit_world
from componentize_py_types import Err
from wit_world.imports.types import (
    Attribute,
    Outcome_Drop,
    Outcome_Keep,
    Outcome_Reject,
    Rejection,
    Value_Boolean,
    Value_Float,
    Value_Int,
    Value_Str,
)

_VALUES = (Value_Str, Value_Int, Value_Float, Value_Boolean)


class Setting:
    """A setting read by `parse(text)` instead of by its default's type;
    `parse` raises ValueError (with a message) to refuse the text."""

    def __init__(self, default, parse):
        self.default = default
        self.parse = parse


class Transformer(wit_world.WitWorld):
    """The world's exports from class attributes: NAME, VERSION, and
    SETTINGS, the keys the `settings` table in pipeline.toml may have, each
    with its default (or a `Setting`). The text pipeline.toml gives is read
    as the default's type: int, float, bool (`true`/`false`), str, or a list
    of str from a comma-separated list. A key not listed refuses the plugin,
    naming it and those accepted. `self.settings` holds what was read, as
    attributes (`self.settings.max_depth`). Define `transform(self, batch)`,
    and `init(self, settings)` to check the settings (raise to refuse them;
    a value it returns replaces them)."""

    NAME = "plugin"
    VERSION = "0.1.0"
    SETTINGS = {}

    def name(self) -> str:
        return self.NAME

    def version(self) -> str:
        return self.VERSION

    def configure(self, settings):
        values = read_settings(self.NAME, self.SETTINGS, settings)
        try:
            made = self.init(values)
        except Err:
            raise
        except Exception as e:
            raise Err(str(e))
        # On the class: it outlives the instance whatever makes one per call.
        type(self)._settings = values if made is None else made

    def init(self, settings):
        return None

    @property
    def settings(self):
        cls = type(self)
        if "_settings" not in cls.__dict__:
            cls._settings = read_settings(cls.NAME, cls.SETTINGS, [])
        return cls._settings


def read_settings(name, specs, pairs):
    """The settings `pairs` (key, text) read against `specs` (key: default
    or Setting), as a namespace; raises Err naming the key at fault."""
    values = {}
    for key, spec in specs.items():
        default = spec.default if isinstance(spec, Setting) else spec
        values[key] = list(default) if isinstance(default, list) else default
    for key, text in pairs:
        if key not in specs:
            accepted = "accepts " + ", ".join(specs) if specs else "takes none"
            raise Err(f"unknown setting `{key}`: {name} {accepted}")
        spec = specs[key]
        try:
            values[key] = spec.parse(text) if isinstance(spec, Setting) else _parse(spec, text)
        except ValueError as e:
            raise Err(f"{key} = `{text}`: {e}")
    return SimpleNamespace(**values)


def _parse(default, text):
    if isinstance(default, bool):
        if text.strip() in ("true", "false"):
            return text.strip() == "true"
        raise ValueError("expected `true` or `false`")
    if isinstance(default, int):
        try:
            return int(text.strip())
        except ValueError:
            raise ValueError("expected a whole number") from None
    if isinstance(default, float):
        try:
            return float(text.strip())
        except ValueError:
            raise ValueError("expected a number") from None
    if isinstance(default, list):
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def keep(event):
    """Keep the event (as modified) and pass it on."""
    return Outcome_Keep(event)


def drop(reason):
    """Drop the event on purpose: not stored, not an error; the reason is counted."""
    return Outcome_Drop(reason)


def reject(field, reason=None):
    """Refuse the event as invalid: dead-lettered as `field: reason`
    (`reject(reason)` blames no field)."""
    if reason is None:
        return Outcome_Reject(Rejection(field=None, reason=field))
    return Outcome_Reject(Rejection(field=field, reason=reason))


def set_attribute(event, key, value):
    """Sets attribute `key`, replacing its value in place if the event has
    it: a str is stored as `str`, an int as `int`, a float as `float`, a
    bool as `boolean`, a Value_* as given. Returns the event."""
    if isinstance(value, bool):
        typed = Value_Boolean(value)
    elif isinstance(value, int):
        typed = Value_Int(value)
    elif isinstance(value, float):
        typed = Value_Float(value)
    elif isinstance(value, str):
        typed = Value_Str(value)
    elif isinstance(value, _VALUES):
        typed = value
    else:
        raise TypeError(f"an attribute value is a str, int, float, bool or Value_*, not {value!r}")
    for attribute in event.attributes:
        if attribute.key == key:
            attribute.value = typed
            return event
    event.attributes.append(Attribute(key=key, value=typed))
    return event


def get_attribute(event, key):
    """The value of attribute `key` (untagged), or None."""
    for attribute in event.attributes:
        if attribute.key == key:
            return attribute.value.value
    return None


def remove_attribute(event, key):
    """Removes attribute `key`; its value (untagged), or None."""
    for i, attribute in enumerate(event.attributes):
        if attribute.key == key:
            return event.attributes.pop(i).value.value
    return None
