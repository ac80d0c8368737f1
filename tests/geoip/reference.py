"""The answers tests/geoip.rs expects, from MaxMind's own reader (the
`maxminddb` package on PyPI), independently of the Rust crate.

Reads {"databases": [path, ...], "addresses": [text, ...]} on stdin and
prints one answer per address: null, or {"country": ..., "city": ...}.
The rule is docs/configuration.md's (`geoip.databases`): the databases in
order, the country from the first that has one, the city from the first
that has one. An address is the text with surrounding whitespace removed; ::ffff:a.b.c.d is a.b.c.d.
"""
import ipaddress
import json
import sys

import maxminddb


def name(value):
    """A plain string (flat layout) or a GeoIP2 map (iso_code, else names.en)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        iso_code = value.get("iso_code")
        return iso_code if iso_code is not None else value.get("names", {}).get("en")
    return None


def lookup(readers, text):
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    country = city = None
    for path, reader in readers:
        if address.version == 6 and reader.metadata().ip_version == 4:
            # The claim the Rust side relies on: MaxMind's reader refuses
            # this lookup instead of answering from the IPv4 tree.
            try:
                answer = reader.get(address)
            except ValueError:
                continue
            sys.exit(f"{path}: an IPv6 lookup ({address}) in an IPv4-only database answered {answer!r} instead of raising ValueError")
        record = reader.get(address)
        if not isinstance(record, dict):
            continue
        if country is None:
            code = record.get("country_code")
            country = (code if code is not None else name(record.get("country"))) or None
        if city is None:
            city = name(record.get("city")) or None
        if country is not None and city is not None:
            break
    if country is None and city is None:
        return None
    return {"country": country, "city": city}


request = json.load(sys.stdin)
readers = [(path, maxminddb.open_database(path)) for path in request["databases"]]
json.dump([lookup(readers, text) for text in request["addresses"]], sys.stdout)
