//! What `medgate bench` prints: a table for people (ceilings first, then each level with its
//! ratios to them), JSON for machines (`--json`), and an SVG chart of throughput and p99
//! latency against concurrency (`--plot FILE.svg`, drawn with plotters' SVG backend).

use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use super::ceiling::HsmCeilings;
use super::reader::Reads;

/// One concurrency level, one run.
#[derive(Debug, Clone, Serialize)]
pub struct Level {
    pub concurrency: usize,
    /// Which round of the levels this run was in (1-based).
    pub run: usize,
    pub records_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The null endpoint, same generator, same level.
    pub null_per_s: f64,
    pub null_p99_ms: f64,
    /// The store's write+flush rate with `store_group` records per flush.
    pub store_per_s: f64,
    pub store_group: usize,
    pub pkcs11_calls_per_record: f64,
    /// HSM operations per record: data-key wraps, batch signatures, pseudonym HMACs.
    pub wraps_per_record: f64,
    pub signs_per_record: f64,
    pub hmacs_per_record: f64,
    /// CPU microseconds per record over the level, all cores, the gateway and the generator
    /// together (the HSM module is a library of this process and counts too).
    pub cpu_us_per_record: Option<f64>,
    /// The same for the null endpoint's requests: the generator, TLS and HTTP alone.
    pub null_cpu_us_per_request: Option<f64>,
    /// Resident memory of the process (gateway and generator) after the level, MiB.
    pub rss_mib: Option<f64>,
    /// The most the process had resident while the gateway was under the level's load, MiB
    /// (None when the kernel would not reset its high-water mark).
    pub peak_rss_mib: Option<f64>,
    /// The reader's documents retrieved meanwhile (`--reads`).
    pub reads: Option<Reads>,
}

impl Level {
    /// Records (ITI-65 requests, each with its SubmissionSet: two ledger entries) per signed
    /// batch (one signature per batch).
    pub fn entries_per_batch(&self) -> f64 {
        if self.signs_per_record > 0.0 {
            1.0 / self.signs_per_record
        } else {
            0.0
        }
    }

    /// What the gateway adds per record to TLS, HTTP and the generator (CPU µs).
    pub fn own_cpu_us(&self) -> Option<f64> {
        Some(self.cpu_us_per_record? - self.null_cpu_us_per_request?)
    }

    /// The records/s that `cores` fully busy would allow at this CPU cost per record.
    pub fn cpu_bound_per_s(&self, cores: usize) -> Option<f64> {
        crate::cpu::rate_allowed(cores, self.cpu_us_per_record?)
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// UTC date and time of the run.
    pub date: String,
    pub cores: usize,
    /// One-minute load average before and after the run (other work on the machine).
    pub load_before: Option<f64>,
    pub load_after: Option<f64>,
    pub records_per_level: usize,
    pub document_bytes: usize,
    pub batch_max_entries: usize,
    pub hsm_pool: usize,
    /// Submissions prepared at once (`limits.max_submissions_preparing`).
    pub submissions_preparing: u32,
    /// How the site's KEK wraps data keys (`rfc5649` or `aes_gcm`).
    pub kek_scheme: String,
    pub hsm: HsmCeilings,
    /// The raw rate of the wrap the gateway does per record (best of 1 and 2 threads).
    pub wrap_ceiling: Option<f64>,
    pub levels: Vec<Level>,
    /// The shred pass after an erasure, when asked for.
    pub shred: Option<serde_json::Value>,
    /// Records in the vault before the first level (`--prefill`).
    pub prefilled: usize,
    /// Each level against the one before it in the same round (see [`Report::compare_rounds`]).
    pub same_round: Vec<SameRound>,
    /// The reader's documents retrieved with no ingest running (`--reads`).
    pub reads_alone: Option<Reads>,
}

/// One level against the level listed before it, round by round, for every round in which both
/// ran: the machine's drift over the whole run mostly cancels out of these ratios, which the
/// levels' own figures carry in full.
#[derive(Debug, Clone, Serialize)]
pub struct SameRound {
    pub concurrency: usize,
    pub before: usize,
    pub rounds: Vec<RoundRatio>,
}

/// A level over the one listed before it, in one round.
#[derive(Debug, Clone, Serialize)]
pub struct RoundRatio {
    pub round: usize,
    /// records/s of the level over records/s of the one before.
    pub rate: f64,
    /// CPU µs per record of the level over that of the one before (None without both readings).
    pub cpu: Option<f64>,
}

impl SameRound {
    /// The middle of the rate ratios (the mean of the middle two for an even count).
    pub fn median_rate_ratio(&self) -> Option<f64> {
        let mut r: Vec<f64> = self.rounds.iter().map(|x| x.rate).collect();
        r.sort_by(f64::total_cmp);
        match r.len() {
            0 => None,
            n if n % 2 == 1 => Some(r[n / 2]),
            n => Some((r[n / 2 - 1] + r[n / 2]) / 2.0),
        }
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"))
}

fn ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".to_owned(),
    }
}

impl Report {
    /// Fills [`Report::same_round`] from the levels: each level after the first (in the order
    /// the command line lists them) against the one listed before it, round by round.
    pub fn compare_rounds(&mut self) {
        let mut order: Vec<usize> = Vec::new();
        for l in &self.levels {
            if !order.contains(&l.concurrency) {
                order.push(l.concurrency);
            }
        }
        let find = |c: usize, run: usize| self.levels.iter().find(|l| l.concurrency == c && l.run == run);
        self.same_round = order
            .windows(2)
            .map(|w| {
                let (before, c) = (w[0], w[1]);
                let rounds = self
                    .levels
                    .iter()
                    .filter(|l| l.concurrency == c)
                    .filter_map(|l| Some((find(before, l.run)?, l)))
                    .filter(|(b, _)| b.records_per_s > 0.0)
                    .map(|(b, l)| RoundRatio {
                        round: l.run,
                        rate: l.records_per_s / b.records_per_s,
                        cpu: b.cpu_us_per_record.filter(|v| *v > 0.0).and_then(|bc| Some(l.cpu_us_per_record? / bc)),
                    })
                    .collect();
                SameRound { concurrency: c, before, rounds }
            })
            .collect();
    }

    /// The table for people.
    pub fn print_table(&self) {
        println!(
            "medgate bench {}: {} documents of {} bytes per level ({} records in the vault before), mutual TLS over loopback, SoftHSM2, batches of at most {} entries, HSM pool {}, {} submissions prepared at once, {} cores, load average {} before",
            self.date,
            self.records_per_level,
            self.document_bytes,
            self.prefilled,
            self.batch_max_entries,
            self.hsm_pool,
            self.submissions_preparing,
            self.cores,
            self.load_before.map_or("?".into(), |l| format!("{l:.2}")),
        );
        println!("ceilings measured in this run (operations/s, 1 thread / 2 threads):");
        for (name, one, two) in &self.hsm.rows {
            println!("  HSM raw {name:<42} {:>8} / {:<8}", opt(*one), opt(*two));
        }
        println!("  the site's KEK wraps with {}: the wrap ceiling is {} records/s", self.kek_scheme, opt(self.wrap_ceiling));
        let site = self.hsm.best(medgate_hsm::ceiling::RawOp::WrapSiteKek.name());
        println!("  (the ceiling uses a session key; the site's own KEK, a token object, wraps at {} records/s)", opt(site));
        println!(
            "{:>5} {:>3} {:>9} {:>7} {:>7} | {:>8} {:>7} | {:>9} {:>5} | {:>6} {:>6} {:>6} | {:>9} {:>17} {:>7} | {:>7} {:>8}",
            "conc", "run", "records/s", "p50 ms", "p99 ms", "null/s", "p99 ms", "store/s", "group", "×null", "×store", "×wrap", "calls/rec", "wrap sign hmac", "rec/sig", "RSS MiB", "peak MiB"
        );
        for l in &self.levels {
            println!(
                "{:>5} {:>3} {:>9.0} {:>7.2} {:>7.2} | {:>8.0} {:>7.2} | {:>9.0} {:>5} | {:>6} {:>6} {:>6} | {:>9.2} {:>17} {:>7.1} | {:>7} {:>8}",
                l.concurrency,
                l.run,
                l.records_per_s,
                l.p50_ms,
                l.p99_ms,
                l.null_per_s,
                l.null_p99_ms,
                l.store_per_s,
                l.store_group,
                ratio(l.records_per_s, Some(l.null_per_s)),
                ratio(l.records_per_s, Some(l.store_per_s)),
                ratio(l.records_per_s, self.wrap_ceiling),
                l.pkcs11_calls_per_record,
                format!("{:.2} {:.3} {:.3}", l.wraps_per_record, l.signs_per_record, l.hmacs_per_record),
                l.entries_per_batch(),
                l.rss_mib.map_or("-".into(), |m| format!("{m:.0}")),
                l.peak_rss_mib.map_or("-".into(), |m| format!("{m:.0}")),
            );
        }
        println!("CPU per record, all cores, this process (gateway, HSM module and generator; the null endpoint: generator, TLS and HTTP alone):");
        println!("{:>5} {:>3} {:>10} {:>10} {:>10} | {:>14} {:>9}", "conc", "run", "µs/record", "null µs", "gateway µs", "cores allow/s", "×allowed");
        for l in &self.levels {
            let us = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"));
            let allowed = l.cpu_bound_per_s(self.cores);
            println!(
                "{:>5} {:>3} {:>10} {:>10} {:>10} | {:>14} {:>9}",
                l.concurrency,
                l.run,
                us(l.cpu_us_per_record),
                us(l.null_cpu_us_per_request),
                us(l.own_cpu_us()),
                opt(allowed),
                ratio(l.records_per_s, allowed)
            );
        }
        if !self.same_round.is_empty() {
            println!("each level against the one listed before it, round by round (records/s ratio; CPU µs per record ratio):");
            for p in &self.same_round {
                let rates = p.rounds.iter().map(|r| format!("{:.2}", r.rate)).collect::<Vec<_>>().join(" ");
                let cpus = p.rounds.iter().map(|r| r.cpu.map_or_else(|| "-".to_owned(), |c| format!("{c:.2}"))).collect::<Vec<_>>().join(" ");
                println!(
                    "  c={} / c={}: {rates} (median {}); CPU per record {cpus}",
                    p.concurrency,
                    p.before,
                    p.median_rate_ratio().map_or_else(|| "-".to_owned(), |m| format!("{m:.2}")),
                );
            }
        }
        if let Some(alone) = &self.reads_alone {
            println!("one reader, a certificate of its own, retrieving documents one after another (ITI-68 GET /Binary, each read a ledger access entry;");
            println!("the levels' CPU and PKCS#11 calls per record above count its reads too):");
            println!("{:>5} {:>3} {:>7} {:>9} {:>9} {:>9}", "conc", "run", "reads", "p50 ms", "p99 ms", "max ms");
            let row = |c: &str, run: &str, r: &Reads| println!("{c:>5} {run:>3} {:>7} {:>9.2} {:>9.2} {:>9.2}", r.count, r.p50_ms, r.p99_ms, r.max_ms);
            row("alone", "", alone);
            for l in &self.levels {
                if let Some(r) = &l.reads {
                    row(&l.concurrency.to_string(), &l.run.to_string(), r);
                }
            }
        }
        println!("load average after the run: {}", self.load_after.map_or("?".into(), |l| format!("{l:.2}")));
    }

    /// Throughput (gateway and null endpoint) and the gateway's p99 against concurrency, the
    /// best run of each level.
    pub fn plot(&self, path: &Path) -> Result<(), String> {
        let mut levels: Vec<usize> = self.levels.iter().map(|l| l.concurrency).collect();
        levels.sort_unstable();
        levels.dedup();
        let best = |c: usize| self.levels.iter().filter(|l| l.concurrency == c).max_by(|a, b| a.records_per_s.total_cmp(&b.records_per_s));
        let points: Vec<&Level> = levels.iter().filter_map(|c| best(*c)).collect();
        if points.is_empty() {
            return Err("nothing measured to plot".into());
        }
        let x_max = (*levels.last().unwrap_or(&1) as f64 * 1.5).max(2.0);
        let y_max = points.iter().map(|l| l.records_per_s.max(l.null_per_s)).fold(1.0, f64::max) * 1.15;
        let p99_max = points.iter().map(|l| l.p99_ms).fold(1.0, f64::max) * 1.15;
        let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
        let e = |e: &dyn std::fmt::Display| e.to_string();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("medgate bench {} ({} B documents, {} cores)", self.date, self.document_bytes, self.cores), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .right_y_label_area_size(70)
            .build_cartesian_2d((0.8f64..x_max).log_scale(), 0f64..y_max)
            .map_err(|x| e(&x))?
            .set_secondary_coord((0.8f64..x_max).log_scale(), 0f64..p99_max);
        chart
            .configure_mesh()
            .x_desc("concurrent HIS clients")
            .y_desc("requests/s")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()
            .map_err(|x| e(&x))?;
        chart.configure_secondary_axes().y_desc("p99 ms").draw().map_err(|x| e(&x))?;
        let series = |f: fn(&Level) -> f64| points.iter().map(move |l| (l.concurrency as f64, f(l))).collect::<Vec<_>>();
        chart
            .draw_series(LineSeries::new(series(|l| l.records_per_s), BLUE.stroke_width(2)).point_size(4))
            .map_err(|x| e(&x))?
            .label("medgate records/s")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(series(|l| l.null_per_s), GREEN.stroke_width(2)).point_size(4))
            .map_err(|x| e(&x))?
            .label("null mTLS endpoint requests/s")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN.stroke_width(2)));
        chart
            .draw_secondary_series(LineSeries::new(series(|l| l.p99_ms), RED.stroke_width(2)).point_size(4))
            .map_err(|x| e(&x))?
            .label("medgate p99 ms (right axis)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).position(SeriesLabelPosition::UpperLeft).draw().map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn level(concurrency: usize, run: usize, records_per_s: f64, cpu: Option<f64>) -> Level {
        Level {
            concurrency,
            run,
            records_per_s,
            p50_ms: 1.0,
            p99_ms: 2.0,
            null_per_s: 10_000.0,
            null_p99_ms: 1.0,
            store_per_s: 20_000.0,
            store_group: 64,
            pkcs11_calls_per_record: 2.0,
            wraps_per_record: 2.0,
            signs_per_record: 0.05,
            hmacs_per_record: 0.0,
            cpu_us_per_record: cpu,
            null_cpu_us_per_request: Some(80.0),
            rss_mib: None,
            peak_rss_mib: None,
            reads: None,
        }
    }

    fn report(levels: Vec<Level>) -> Report {
        Report {
            date: String::new(),
            cores: 2,
            load_before: None,
            load_after: None,
            records_per_level: 100,
            document_bytes: 4096,
            batch_max_entries: 64,
            hsm_pool: 4,
            submissions_preparing: 8,
            kek_scheme: "aes_gcm".into(),
            hsm: HsmCeilings { rows: Vec::new() },
            wrap_ceiling: None,
            levels,
            shred: None,
            prefilled: 0,
            same_round: Vec::new(),
            reads_alone: None,
        }
    }

    #[test]
    fn levels_are_compared_within_their_round_only() {
        // Round 2 ran on a machine twice as fast, its levels in reverse: its ratios are still
        // c=256 over c=64, read from its own two runs.
        let mut r = report(vec![
            level(64, 1, 1000.0, Some(1000.0)),
            level(256, 1, 900.0, Some(1100.0)),
            level(1024, 1, 450.0, None),
            level(1024, 2, 1000.0, Some(900.0)),
            level(256, 2, 2200.0, Some(450.0)),
            level(64, 2, 2000.0, Some(500.0)),
            level(64, 3, 1500.0, Some(700.0)),
        ]);
        r.compare_rounds();
        let pairs: Vec<(usize, usize)> = r.same_round.iter().map(|p| (p.concurrency, p.before)).collect();
        assert_eq!(pairs, [(256, 64), (1024, 256)], "in the order round 1 lists the levels");
        let ratios = |p: &SameRound| p.rounds.iter().map(|x| (x.round, x.rate, x.cpu)).collect::<Vec<_>>();
        assert_eq!(ratios(&r.same_round[0]), [(1, 0.9, Some(1.1)), (2, 1.1, Some(0.9))], "round 3 has no c=256 and is left out");
        assert!((r.same_round[0].median_rate_ratio().unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(ratios(&r.same_round[1]), [(1, 0.5, None), (2, 1000.0 / 2200.0, Some(2.0))], "no CPU reading in round 1, no CPU ratio");
        assert_eq!(r.same_round[1].median_rate_ratio(), Some((0.5 + 1000.0 / 2200.0) / 2.0));
    }
}
