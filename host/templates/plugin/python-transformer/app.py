"""{{name}}: a clickstream transform (contract {{contract}}, world `transformer`).

A starting point that shows each outcome: it keeps page views with a
`section` attribute (the first segment of the URL's path) and the country
and city of the client address when no earlier transform set them, drops
health checks, and rejects URLs that are neither http(s) nor a path. Edit
`transform_one`, then run `clickstream plugin build` and `clickstream plugin test`.

The world's functions are the methods of the `WitWorld` class, which
`Transformer` (clickstream_plugin.py) makes from NAME, VERSION and SETTINGS;
a record is a dataclass with snake_case fields, an option is a value or
`None`, and an outcome is `keep(event)`, `drop(reason)` or `reject(field, reason)`.
"""

import re

from clickstream_plugin import Transformer, drop, keep, reject, set_attribute
from wit_world.imports import geoip


class WitWorld(Transformer):
    NAME = "{{name}}"
    VERSION = "0.1.0"
    # The `settings` table of this transform in pipeline.toml, each key with
    # its default; the text there is read as the default's type (here a
    # comma-separated list: `settings = { health_paths = "/health,/ping" }`).
    # Any other key refuses the plugin, naming it.
    SETTINGS = {"health_paths": ["/health"]}

    def transform(self, batch):
        """One outcome per event, in order. The GeoIP lookup is one call for
        the whole batch: each call crosses the sandbox boundary."""
        places = geoip.lookup_batch([event.ip for event in batch])
        return [transform_one(event, place, self.settings) for event, place in zip(batch, places)]


def transform_one(event, place, settings):
    path = path_of(event.url)
    if path is None:
        return reject("url", "neither an http(s) URL nor a path")
    if any(path.startswith(prefix) for prefix in settings.health_paths):
        return drop("health check")
    section = re.split(r"[/?#]", path.lstrip("/"))[0] or "home"
    set_attribute(event, "section", section)
    if event.country is None and place is not None:
        event.country = place.country
        event.city = place.city
    return keep(event)


def path_of(url):
    """The path (with query) of an http(s) URL or of a bare path."""
    if url.startswith("/"):
        return url
    m = re.match(r"^https?://[^/?#]*(.*)$", url)
    if m is None:
        return None
    rest = m.group(1)
    return "/" if rest == "" or rest[0] in "?#" else rest
