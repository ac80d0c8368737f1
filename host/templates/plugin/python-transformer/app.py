"""{{name}}: a clickstream transform (contract {{contract}}, world `transformer`).

A starting point that shows each outcome: it keeps page views with a
`section` attribute (the first segment of the URL's path) and the country
and city of the client address when no earlier transform set them, drops
health checks, and rejects URLs that are neither http(s) nor a path. Edit
`transform_one`, then run `clickstream plugin build` and `clickstream plugin test`.

The world's functions are the methods of the `WitWorld` class; a variant
case is a class (`Outcome_Keep(event)`), an option is a value or `None`,
and `configure` refuses a setting by raising `Err(message)`.
"""

import re

import wit_world
from componentize_py_types import Err
from wit_world.imports import geoip
from wit_world.imports.types import Attribute, Outcome_Drop, Outcome_Keep, Outcome_Reject, Rejection, Value_Str


class WitWorld(wit_world.WitWorld):
    def name(self) -> str:
        return "{{name}}"

    def version(self) -> str:
        return "0.1.0"

    def configure(self, settings):
        """The `settings` table of this transform in pipeline.toml, as
        (key, value) pairs. Refuse what you do not know: the host then
        refuses the plugin with the message."""
        if settings:
            raise Err(f"unknown setting `{settings[0][0]}`: {{name}} takes none")

    def transform(self, batch):
        """One outcome per event, in order. The GeoIP lookup is one call for
        the whole batch: each call crosses the sandbox boundary."""
        places = geoip.lookup_batch([event.ip for event in batch])
        return [transform_one(event, place) for event, place in zip(batch, places)]


def transform_one(event, place):
    path = path_of(event.url)
    if path is None:
        return Outcome_Reject(Rejection(field="url", reason="neither an http(s) URL nor a path"))
    if path.startswith("/health"):
        return Outcome_Drop("health check")
    section = re.split(r"[/?#]", path.lstrip("/"))[0] or "home"
    event.attributes.append(Attribute(key="section", value=Value_Str(section)))
    if event.country is None and place is not None:
        event.country = place.country
        event.city = place.city
    return Outcome_Keep(event)


def path_of(url):
    """The path (with query) of an http(s) URL or of a bare path."""
    if url.startswith("/"):
        return url
    m = re.match(r"^https?://[^/?#]*(.*)$", url)
    if m is None:
        return None
    rest = m.group(1)
    return "/" if rest == "" or rest[0] in "?#" else rest
