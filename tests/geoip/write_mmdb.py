"""Writes small MMDB files for tests/geoip.rs with mmdb-writer (PyPI).

Reads a JSON list of databases on stdin, each:
  {"path": ..., "ip_version": 4 | 6, "layout": "flat" | "geoip2",
   "alias_ipv4_mapped": bool, "networks": [[cidr, country, city], ...]}
"flat" is the @ip-location-db record (country_code, city, state1, latitude,
longitude); "geoip2" is MaxMind's nested one (country.iso_code,
city.names.en). An empty or null city is written as the real files do: ""
in the flat layout, no `city` key in GeoIP2. A null city with the flat
layout and no other field gives a country-only record, like
geo-whois-asn-country. IPv4 networks in an IPv6 database go under ::/96, as
the @ip-location-db files store them; `alias_ipv4_mapped` also writes them
under ::ffff:0:0/96, as MaxMind's own files answer there.

Optional keys, for tests/geoip_refresh.rs: "records": [[cidr, record], ...]
inserts each record as given (a layout the host does not read, say);
"metadata": {key: value} overrides the metadata mmdb-writer writes (a null
value removes the key), e.g. a fixed build_epoch, or a node_count the file
does not hold.
"""
import json
import sys

from mmdb_writer import MMDBWriter, MmdbF32
from netaddr import IPNetwork, IPSet

# geoname ids only make the GeoIP2 records look real; nothing reads them.
GEONAME_IDS = {"US": 6252001, "GB": 2635167, "AU": 2077456, "DE": 2921044, "CA": 6251999, "IE": 2963597, "CH": 2658434}


def flat_record(country, city, country_only):
    if country_only:
        return {"country_code": country}
    return {
        "country_code": country,
        "city": city or "",
        "state1": "",
        "latitude": MmdbF32(1.5),
        "longitude": MmdbF32(-2.25),
    }


def geoip2_record(country, city):
    record = {
        "country": {"geoname_id": GEONAME_IDS.get(country, 1), "iso_code": country, "names": {"en": f"Country {country}", "de": f"Land {country}"}},
        "registered_country": {"geoname_id": 1, "iso_code": "ZZ", "names": {"en": "Registrant"}},
        "location": {"latitude": 1.5, "longitude": -2.25, "accuracy_radius": 100},
    }
    if city:
        record["city"] = {"geoname_id": 42, "names": {"en": city, "fr": city + " (fr)"}}
    return record


def write(spec):
    ip_version = spec["ip_version"]
    writer = MMDBWriter(
        ip_version=ip_version,
        database_type=spec.get("database_type", "test-city"),
        languages=["en"],
        description="tests/geoip.rs fixture",
        ipv4_compatible=ip_version == 6,
    )
    country_only = all(city is None for _, _, city in spec["networks"])
    for cidr, country, city in spec["networks"]:
        if spec["layout"] == "flat":
            record = flat_record(country, city, country_only)
        else:
            record = geoip2_record(country, city)
        network = IPNetwork(cidr)
        writer.insert_network(IPSet([network]), record)
        if network.version == 4 and spec.get("alias_ipv4_mapped"):
            mapped = IPNetwork(f"::ffff:{network.network}/{96 + network.prefixlen}")
            writer.insert_network(IPSet([mapped]), record)
    for cidr, record in spec.get("records", []):
        writer.insert_network(IPSet([IPNetwork(cidr)]), record)
    overrides = spec.get("metadata")
    if overrides:
        # mmdb-writer builds the metadata when it writes; node_count and
        # record_size come first, so an override wins over them too.
        metadata = writer._build_meta()
        for key, value in overrides.items():
            if value is None:
                metadata.pop(key, None)
            else:
                metadata[key] = value
        writer._build_meta = lambda: metadata
    writer.to_db_file(spec["path"])


for spec in json.load(sys.stdin):
    write(spec)
