//! GeoIP lookups against real MMDB files: tiny ones written here in both
//! record layouts, and the downloaded `data/geoip/` ones. Every answer is
//! checked against MaxMind's own reader (the `maxminddb` package on PyPI,
//! driven by `tests/geoip/reference.py`), which shares no code with the Rust
//! crate the host uses.

use clickstream_testkit as support;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use clickstream::plugin::geoip::{GeoIp, GeoLocation};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Networks of the IPv4-only city databases. 2001:db8::/32 read as IPv4 is
/// 32.1.13.184 and 2001:4860::/32 is 32.1.72.96: an IPv6 lookup walked into
/// an IPv4 tree lands in 32.0.0.0/8, whose answer differs from the IPv6
/// database's.
const CITY_V4: &[(&str, &str, &str)] = &[
    ("32.0.0.0/8", "US", "Ashburn"),
    ("81.2.69.0/24", "GB", "London"),
    // A country without a city: the city must come from a later database.
    ("1.0.0.0/24", "AU", ""),
];

/// Networks of the IPv6 city databases: IPv4 ones (stored under ::/96) and
/// IPv6 ones.
const CITY_V6: &[(&str, &str, &str)] = &[
    ("81.2.69.0/24", "GB", "London"),
    ("1.0.0.0/24", "AU", "Brisbane"),
    ("5.5.5.0/24", "DE", "Berlin"),
    ("2001:db8::/32", "CA", "Montreal"),
    ("2a00:1450::/32", "IE", "Dublin"),
];

/// Networks of the country-only database (like geo-whois-asn-country).
const COUNTRY: &[(&str, &str)] = &[
    ("32.0.0.0/8", "US"),
    ("81.2.69.0/24", "GB"),
    ("9.9.9.0/24", "CH"),
    ("2001:db8::/32", "CA"),
    ("2620:fe::/48", "CH"),
    ("2a00:1450::/32", "IE"),
];

/// Addresses for the fixture databases: IPv4, IPv6, IPv4-mapped,
/// IPv4-compatible, private and loopback, and malformed text.
const FIXTURE_ADDRESSES: &[&str] = &[
    "32.1.13.184",
    "32.1.72.96",
    "81.2.69.142",
    "1.0.0.1",
    "5.5.5.5",
    "9.9.9.9",
    "8.8.8.8",
    "0.0.0.0",
    "255.255.255.255",
    "2001:db8::1",
    "2001:db8:ffff:ffff::1",
    "2001:db9::1",
    "2001:4860:4860::8888",
    "2a00:1450:4001:81b::200e",
    "2620:fe::fe",
    "::ffff:81.2.69.142",
    "::ffff:32.1.13.184",
    "::ffff:5.5.5.5",
    "::ffff:1.0.0.1",
    "::FFFF:9.9.9.9",
    "::ffff:10.0.0.1",
    "::81.2.69.142",
    "::5.5.5.5",
    "10.0.0.1",
    "192.168.1.1",
    "127.0.0.1",
    "::1",
    "::",
    "fe80::1",
    "",
    "999.1.1.1",
    "abc",
    "1.2.3",
    " 81.2.69.142 ",
    "\t2001:db8::1\n",
    "81.2.69.142/24",
    "[2001:db8::1]",
    "2001:db8::g",
];

/// The tiny databases of one test, in a temp dir of its own.
struct Fixtures {
    _dir: tempfile::TempDir,
    flat_v4: PathBuf,
    flat_v6: PathBuf,
    geoip2_v4: PathBuf,
    geoip2_v6: PathBuf,
    country: PathBuf,
}

impl Fixtures {
    /// Writes them with `tests/geoip/write_mmdb.py` (mmdb-writer).
    fn write() -> Fixtures {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let city = |networks: &[(&str, &str, &str)]| -> Vec<Value> {
            networks.iter().map(|(cidr, country, city)| json!([cidr, country, city])).collect()
        };
        let country: Vec<Value> = COUNTRY.iter().map(|(cidr, country)| json!([cidr, country, null])).collect();
        let fixtures = Fixtures {
            flat_v4: path("flat-city-ipv4.mmdb"),
            flat_v6: path("flat-city-ipv6.mmdb"),
            geoip2_v4: path("geoip2-city-ipv4.mmdb"),
            geoip2_v6: path("geoip2-city-ipv6.mmdb"),
            country: path("flat-country.mmdb"),
            _dir: dir,
        };
        let specs = json!([
            {"path": fixtures.flat_v4, "ip_version": 4, "layout": "flat", "networks": city(CITY_V4)},
            // Like @ip-location-db: IPv4 only under ::/96, nothing under ::ffff:0:0/96.
            {"path": fixtures.flat_v6, "ip_version": 6, "layout": "flat", "networks": city(CITY_V6)},
            {"path": fixtures.geoip2_v4, "ip_version": 4, "layout": "geoip2", "networks": city(CITY_V4)},
            // Like MaxMind's files: IPv4 answers under ::ffff:0:0/96 too.
            {"path": fixtures.geoip2_v6, "ip_version": 6, "layout": "geoip2", "alias_ipv4_mapped": true, "networks": city(CITY_V6)},
            {"path": fixtures.country, "ip_version": 6, "layout": "flat", "networks": country},
        ]);
        run_python("write_mmdb.py", &specs);
        fixtures
    }

    /// Database lists in lookup order: each layout alone and in the
    /// pipeline's arrangement (IPv4 city, IPv6 city, country), mixed
    /// layouts, and the country database first.
    fn arrangements(&self) -> Vec<Vec<PathBuf>> {
        let (f4, f6, g4, g6, c) = (&self.flat_v4, &self.flat_v6, &self.geoip2_v4, &self.geoip2_v6, &self.country);
        [
            vec![f4],
            vec![f6],
            vec![g4],
            vec![g6],
            vec![c],
            vec![f4, f6, c],
            vec![g4, g6, c],
            vec![g4, f6],
            vec![f4, g6],
            vec![c, f4],
            vec![c, g4, f6],
        ]
        .into_iter()
        .map(|list| list.into_iter().cloned().collect())
        .collect()
    }
}

fn open(databases: &[&PathBuf]) -> GeoIp {
    GeoIp::open(&databases.iter().map(|p| p.to_path_buf()).collect::<Vec<_>>()).unwrap()
}

fn at(country: &str, city: Option<&str>) -> Option<GeoLocation> {
    Some(GeoLocation { country: Some(country.into()), city: city.map(Into::into) })
}

/// Runs `tests/geoip/SCRIPT` with `input` as JSON on stdin; returns its
/// stdout parsed as JSON.
fn run_python(script: &str, input: &Value) -> Value {
    let output = support::mmdb::run_script(script, &input.to_string());
    if output.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(&output).unwrap()
}

/// MaxMind's reader's answers for `addresses` over `databases`, in order.
fn reference(databases: &[PathBuf], addresses: &[String]) -> Vec<Option<GeoLocation>> {
    let answers = run_python("reference.py", &json!({"databases": databases, "addresses": addresses}));
    answers
        .as_array()
        .expect("reference.py prints a list")
        .iter()
        .map(|answer| {
            (!answer.is_null())
                .then(|| GeoLocation { country: answer["country"].as_str().map(Into::into), city: answer["city"].as_str().map(Into::into) })
        })
        .collect()
}

/// Asserts that `GeoIp::lookup` gives MaxMind's reader's answer for every
/// address; returns how many addresses had one.
fn assert_matches_reference(databases: &[PathBuf], addresses: &[String]) -> usize {
    let geoip = GeoIp::open(databases).unwrap();
    let expected = reference(databases, addresses);
    assert_eq!(expected.len(), addresses.len());
    let mismatches: Vec<String> = addresses
        .iter()
        .zip(&expected)
        .filter_map(|(address, expected)| {
            let got = geoip.lookup(address);
            (&got != expected).then(|| format!("{address:?}: got {got:?}, MaxMind's reader says {expected:?}"))
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "{} of {} addresses differ over {databases:?}:\n{}",
        mismatches.len(),
        addresses.len(),
        mismatches.join("\n")
    );
    expected.iter().filter(|e| e.is_some()).count()
}

#[test]
fn an_ipv6_address_is_never_looked_up_in_an_ipv4_only_database() {
    let fixtures = Fixtures::write();
    for (v4, v6) in [(&fixtures.flat_v4, &fixtures.flat_v6), (&fixtures.geoip2_v4, &fixtures.geoip2_v6)] {
        let only_v4 = open(&[v4]);
        // What the IPv4 tree answers for these addresses' first 32 bits.
        assert_eq!(only_v4.lookup("32.1.13.184"), at("US", Some("Ashburn")));
        assert_eq!(only_v4.lookup("32.1.72.96"), at("US", Some("Ashburn")));
        for address in ["2001:db8::1", "2001:4860:4860::8888", "::81.2.69.142", "::1"] {
            assert_eq!(only_v4.lookup(address), None, "{address} in {}", v4.display());
        }

        let both = open(&[v4, v6]);
        assert_eq!(both.lookup("2001:db8::1"), at("CA", Some("Montreal")));
        assert_eq!(both.lookup("2001:db9::1"), None, "no database has 2001:db9::/32");
    }
}

#[test]
fn an_ipv4_mapped_ipv6_address_gets_the_ipv4_answer() {
    let fixtures = Fixtures::write();
    for databases in fixtures.arrangements() {
        let geoip = GeoIp::open(&databases).unwrap();
        for ipv4 in ["81.2.69.142", "32.1.13.184", "5.5.5.5", "1.0.0.1", "9.9.9.9", "10.0.0.1"] {
            assert_eq!(geoip.lookup(&format!("::ffff:{ipv4}")), geoip.lookup(ipv4), "::ffff:{ipv4} over {databases:?}");
        }
    }
    // Neither of these databases answers under ::ffff:0:0/96 itself: the
    // answers come from the IPv4 lookup.
    let v4 = open(&[&fixtures.flat_v4]);
    assert_eq!(v4.lookup("::ffff:81.2.69.142"), at("GB", Some("London")));
    let country = open(&[&fixtures.country]);
    assert_eq!(country.lookup("::ffff:9.9.9.9"), at("CH", None));
}

#[test]
fn an_ipv4_address_is_found_in_an_ipv6_database() {
    let fixtures = Fixtures::write();
    for v6 in [&fixtures.flat_v6, &fixtures.geoip2_v6] {
        let geoip = open(&[v6]);
        assert_eq!(geoip.lookup("5.5.5.5"), at("DE", Some("Berlin")), "{}", v6.display());
        assert_eq!(geoip.lookup("2a00:1450:4001:81b::200e"), at("IE", Some("Dublin")));
    }
}

#[test]
fn country_and_city_each_come_from_the_first_database_that_has_one() {
    let fixtures = Fixtures::write();
    let pipeline = open(&[&fixtures.flat_v4, &fixtures.geoip2_v6, &fixtures.country]);
    // The IPv4 database has AU without a city; the IPv6 one has the city.
    assert_eq!(pipeline.lookup("1.0.0.1"), at("AU", Some("Brisbane")));
    // Only the country database knows this network.
    assert_eq!(pipeline.lookup("2620:fe::fe"), at("CH", None));

    let country_first = open(&[&fixtures.country, &fixtures.geoip2_v4]);
    assert_eq!(country_first.lookup("32.1.13.184"), at("US", Some("Ashburn")));
    assert_eq!(country_first.lookup("2001:db8::1"), at("CA", None));
}

#[test]
fn private_loopback_and_malformed_addresses_have_no_location() {
    let fixtures = Fixtures::write();
    let geoip = open(&[&fixtures.flat_v4, &fixtures.geoip2_v6, &fixtures.country]);
    for address in ["10.0.0.1", "192.168.1.1", "127.0.0.1", "::1", "fe80::1", "", "999.1.1.1", "abc", "1.2.3", "[2001:db8::1]"] {
        assert_eq!(geoip.lookup(address), None, "{address:?}");
    }
    assert_eq!(geoip.lookup(" 81.2.69.142 "), at("GB", Some("London")), "surrounding spaces are ignored");
}

#[test]
fn answers_match_maxminds_own_reader_for_both_layouts() {
    let fixtures = Fixtures::write();
    let addresses: Vec<String> = FIXTURE_ADDRESSES.iter().map(|a| a.to_string()).collect();
    for databases in fixtures.arrangements() {
        let found = assert_matches_reference(&databases, &addresses);
        assert!(found > 0, "no address has an answer over {databases:?}: the fixtures are wrong");
    }
}

/// Random public addresses, the same on every run: IPv4 outside the
/// private, shared, loopback, link-local, multicast and reserved ranges;
/// IPv6 in the blocks the regional registries allocate from, so that many
/// have an answer.
fn random_public_addresses(count: usize) -> (Vec<Ipv4Addr>, Vec<Ipv6Addr>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20_261_129);
    let mut v4 = Vec::with_capacity(count);
    while v4.len() < count {
        let ip = Ipv4Addr::from(rng.gen::<u32>());
        let [a, b, ..] = ip.octets();
        let public = !(a == 0
            || a == 10
            || a == 127
            || a >= 224
            || (a == 100 && (64..128).contains(&b))
            || (a == 169 && b == 254)
            || (a == 172 && (16..32).contains(&b))
            || (a == 192 && b == 168));
        if public {
            v4.push(ip);
        }
    }
    let blocks = [0x2001u16, 0x2400, 0x2600, 0x2800, 0x2a00, 0x2c00];
    let v6 = (0..count)
        .map(|_| {
            let block = blocks[rng.gen_range(0..blocks.len())];
            let first = if block == 0x2001 { block } else { block | rng.gen_range(0..0x10) };
            let rest = rng.gen::<u128>() >> 16;
            Ipv6Addr::from((u128::from(first) << 112) | rest)
        })
        .collect();
    (v4, v6)
}

#[test]
fn answers_match_maxminds_own_reader_on_the_downloaded_databases() {
    let databases = support::downloaded_geoip_databases();
    let geoip = GeoIp::open(&databases).unwrap();

    // DB-IP's IPv6 database; the IPv4 one answers US/Ashburn for 32.1.72.96.
    assert_eq!(geoip.lookup("2001:4860:4860::8888"), at("CA", Some("Montreal")));
    assert!(geoip.lookup("81.2.69.142").is_some());
    assert_eq!(geoip.lookup("::ffff:81.2.69.142"), geoip.lookup("81.2.69.142"));

    let mut addresses: Vec<String> = [
        "2001:4860:4860::8888",
        "2001:4860:4860::8844",
        "2a00:1450:4001:81b::200e",
        "2606:4700:4700::1111",
        "2620:fe::fe",
        "8.8.8.8",
        "1.1.1.1",
        "9.9.9.9",
        "81.2.69.142",
        "::ffff:81.2.69.142",
        "::ffff:8.8.8.8",
        "::81.2.69.142",
        "32.1.72.96",
    ]
    .into_iter()
    .chain(FIXTURE_ADDRESSES.iter().copied())
    .map(String::from)
    .collect();
    let (v4, v6) = random_public_addresses(300);
    addresses.extend(v4.iter().map(|ip| ip.to_string()));
    addresses.extend(v6.iter().map(|ip| ip.to_string()));
    addresses.extend(v4.iter().take(50).map(|ip| ip.to_ipv6_mapped().to_string()));

    for ip in v4.iter().take(50) {
        let mapped = ip.to_ipv6_mapped().to_string();
        assert_eq!(geoip.lookup(&mapped), geoip.lookup(&ip.to_string()), "{mapped}");
    }
    let found = assert_matches_reference(&databases, &addresses);
    let found_v6 = v6.iter().filter(|ip| geoip.lookup(&ip.to_string()).is_some()).count();
    eprintln!("{found} of {} addresses have a location; {found_v6} of {} random IPv6 ones", addresses.len(), v6.len());
    assert!(found_v6 >= v6.len() / 10, "only {found_v6} random IPv6 addresses have a location: the sample proves little");
}

/// A city database whose record for 81.2.69.0/24 is damaged where the
/// check's probes do not look: the city string's size claims 16 MiB past
/// the end of the file (maxminddb slices its buffer unchecked there).
fn damaged_city_db(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("damaged.mmdb");
    let networks = json!([["8.8.8.0/24", "US", "Mountain View"], ["81.2.69.0/24", "GB", "Zzzdamaged"]]);
    run_python("write_mmdb.py", &json!([{"path": path, "ip_version": 4, "layout": "flat", "networks": networks}]));
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(10).position(|w| w == b"Zzzdamaged").expect("the city string in the data section");
    assert_eq!(bytes[at - 1], 0x4a, "a UTF-8 string of 10 bytes");
    // Type 2 (string), size 31: the next three bytes hold the size - 65,821.
    bytes[at - 1] = 0x5f;
    bytes[at..at + 3].copy_from_slice(&[0xff, 0xff, 0xff]);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_record_the_reader_panics_on_answers_no_location_counted_and_the_plugin_call_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = damaged_city_db(dir.path());
    let geoip = std::sync::Arc::new(GeoIp::open(std::slice::from_ref(&path)).expect("the probes do not reach the damage"));
    assert_eq!(geoip.lookup("8.8.8.8"), at("US", Some("Mountain View")));
    assert_eq!(geoip.lookup("81.2.69.142"), None, "a record the reader panics on is no record");
    assert_eq!(geoip.databases()[0].lookup_panics, 1);

    // Through the enrich plugin's geoip import: the panic does not unwind
    // into the plugin call (it used to kill the transform thread).
    let spec = clickstream::plugin::PluginSpec {
        slot: "enrich".into(),
        path: support::plugin("enrich"),
        settings: vec![],
        limits: Default::default(),
    };
    let enrich = clickstream::plugin::transform::LoadedTransform::load(spec, Some(geoip.clone())).unwrap();
    let mut runner = clickstream::plugin::transform::TransformRunner::new(std::sync::Arc::new(clickstream::plugin::Slot::new(enrich)));
    let events: Vec<clickstream::stages::record::TransformEvent> = clickstream::plugin::golden::batch()
        .into_iter()
        .map(|mut e| {
            e.ip = "81.2.69.142".into();
            e.into()
        })
        .collect();
    let (_, outcomes) = runner.transform(&events).expect("the call succeeds");
    for outcome in &outcomes {
        if let clickstream::stages::record::Outcome::Keep(event) = outcome {
            assert_eq!(event.enrichment.country, None, "{event:?}");
        }
    }
    assert!(outcomes.iter().any(|o| matches!(o, clickstream::stages::record::Outcome::Keep(_))), "{outcomes:?}");
    assert!(geoip.databases()[0].lookup_panics > 1, "the plugin's lookups were counted too");
}
