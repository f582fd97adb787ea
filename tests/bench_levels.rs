//! `medgate bench` on a small load: its JSON report carries, for every level, the rate, the
//! same-run ceilings and the CPU each record cost, and the figures agree with
//! what one ITI-65 request is (two data keys wrapped, one per DocumentReference and
//! SubmissionSet); repeated runs come in rounds of all the levels (every other one in reverse),
//! each level compared with the one listed before it, round by round. No speed is asserted.

#![allow(clippy::unwrap_used, reason = "test")]

mod support;

#[test]
fn every_level_reports_its_rate_its_ceilings_and_its_cpu_per_record() {
    let (report, stderr) = support::bench_report(&["--records", "30", "--concurrency", "1,4", "--repeat", "2", "--ceiling-seconds", "0.05"]);
    assert!(report["wrap_ceiling"].as_f64().is_some_and(|r| r > 0.0), "{report}");
    let levels = report["levels"].as_array().unwrap();
    let order: Vec<(u64, u64)> = levels.iter().map(|l| (l["run"].as_u64().unwrap(), l["concurrency"].as_u64().unwrap())).collect();
    assert_eq!(order, [(1, 1), (1, 4), (2, 4), (2, 1)], "rounds of all the levels, the second in reverse");
    for l in levels {
        let f = |k: &str| l[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {l}"));
        assert!(f("records_per_s") > 0.0 && f("null_per_s") > 0.0 && f("store_per_s") > 0.0, "{l}");
        assert_eq!(f("wraps_per_record"), 2.0, "a data key for the document and one for its SubmissionSet: {l}");
        // getrusage over the level: the gateway's records cost more CPU than the null
        // endpoint's empty answers, which still cost the generator, TLS and HTTP something.
        assert!(f("null_cpu_us_per_request") > 0.0, "{l}");
        assert!(f("cpu_us_per_record") > f("null_cpu_us_per_request"), "{l}");
    }
    // c=4 against c=1, round by round, from the levels' own figures (JSON numbers: compared to
    // a few units in the last place).
    let rate = |i: usize| levels[i]["records_per_s"].as_f64().unwrap();
    let same = &report["same_round"].as_array().unwrap()[..];
    assert_eq!(same.len(), 1, "{report}");
    assert_eq!((same[0]["concurrency"].as_u64(), same[0]["before"].as_u64()), (Some(4), Some(1)));
    let rounds = same[0]["rounds"].as_array().unwrap();
    let got: Vec<(u64, f64)> = rounds.iter().map(|r| (r["round"].as_u64().unwrap(), r["rate"].as_f64().unwrap())).collect();
    let want = [(1, rate(1) / rate(0)), (2, rate(2) / rate(3))];
    assert_eq!(got.len(), 2, "{report}");
    for ((round, ratio), (want_round, want_ratio)) in got.iter().zip(want) {
        assert_eq!(*round, want_round);
        assert!((ratio / want_ratio - 1.0).abs() < 1e-12, "round {round}: {ratio} against {want_ratio}");
    }
    assert!(rounds.iter().all(|r| r["cpu"].as_f64().is_some_and(|c| c > 0.0)), "{report}");
    // A progress line per level and run on standard error, with its CPU per record.
    assert_eq!(stderr.matches("CPU µs each").count(), 4, "{stderr}");
}

#[test]
fn the_reader_reads_alone_and_throughout_every_level() {
    let (report, stderr) = support::bench_report(&["--records", "30", "--concurrency", "1,4", "--ceiling-seconds", "0.05", "--reads"]);
    let reads = |r: &serde_json::Value| {
        let f = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {r}"));
        assert!(f("p50_ms") > 0.0 && f("p99_ms") >= f("p50_ms") && f("max_ms") >= f("p99_ms"), "{r}");
        r["count"].as_u64().unwrap()
    };
    assert_eq!(reads(&report["reads_alone"]), 500, "{report}");
    let levels = report["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 2);
    for l in levels {
        // Every read answered 200 with the document's bytes (the bench fails otherwise), and
        // at least one ran during the level, however short.
        assert!(reads(&l["reads"]) >= 1, "{l}");
    }
    assert_eq!(stderr.matches("the reader meanwhile").count(), 2, "{stderr}");
}
