#!/usr/bin/env python3
"""Where a record's CPU goes in `medgate bench`: attributes perf samples to the stages of the
write path and prints core-microseconds per record for each.

    perf record -F 250 --call-graph dwarf,32768 -o perf.data -- \
        target/release/medgate bench --records 20000 --concurrency 64 --ceiling-seconds 0.1
    perf script -i perf.data > perf.txt
    tests/benches/cpu-budget.py perf.txt --records 20000 --frequency 250

Each sample goes to the first stage (in the order below) one of whose patterns appears in its
stack; samples of the bench's own setup (throwaway site, ceilings, null endpoint) are left out.
A sample is 1/frequency seconds of one core, so a stage's core-microseconds per record are its
samples times 10^6/frequency over the records stored. The patterns follow function names: a
renamed function lands in "other" until its pattern is updated here.
"""
import argparse
import collections
import sys

SETUP = ["throwaway_site", "ceiling::", "NullEndpoint", "store_ceiling", "Site::create"]
STAGES = [
    ("load generator (client TLS, request bodies)", ["bench::load", "sample_transaction", "SampleDocument", "client::HisClient", "hyper::client"]),
    ("HSM: data-key wraps under the KEK", ["wrap_data_key", "wrap_with_active_kek"]),
    ("HSM: batch signature", ["LedgerSigner>::sign"]),
    ("ITI-65 parse and validation", ["parse_transaction", "parse_strict", "check_profiles"]),
    ("sealing: AES-GCM, SHA-1 and SHA-256 of the document", ["seal_record", "seal_list", "vault::seal"]),
    ("writer: the group's sled transaction", ["Writer>::transact", "TransactionalTrees"]),
    ("writer: entries looked up on the chain (split_known)", ["split_known"]),
    ("writer: receipts, batch check, block preparation", ["Receipt::for_batch", "Batch::verify", "ChainStore::prepare", "UnsignedBatch", "writer::local::run"]),
    ("sled flush and I/O threads", ["sled::threadpool", "Db::flush", "flusher", "IoBufs", "sync_file_range"]),
    ("answer: receipts and response JSON", ["Gateway>::answer", "provide_response", "Gateway>::known"]),
    ("rest of the request handler (idempotency claim, entries, record JSON)", ["Api::dispatch", "Gateway>::create", "records::"]),
    ("server TLS and HTTP (and loopback TCP)", ["medgate_gateway::server", "rustls", "hyper::proto", "hyper_util"]),
    ("tokio scheduling and blocking hand-overs", ["tokio::runtime"]),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("script", help="output of `perf script`")
    ap.add_argument("--records", type=int, required=True, help="records the bench stored while perf recorded")
    ap.add_argument("--frequency", type=float, required=True, help="perf record -F")
    a = ap.parse_args()
    counts = collections.Counter()
    setup = 0
    with open(a.script, errors="replace") as f:
        samples = f.read().split("\n\n")
    for s in samples:
        stack = s.strip().split("\n")[1:]
        if not stack:
            continue
        text = " ".join(stack)
        if any(p in text for p in SETUP):
            setup += 1
            continue
        for name, patterns in STAGES:
            if any(p in text for p in patterns):
                counts[name] += 1
                break
        else:
            counts["other (kernel, allocator, unattributed)"] += 1
    total = sum(counts.values())
    if total == 0:
        sys.exit("no samples outside the bench's setup")
    per_sample_us = 1e6 / a.frequency
    print(f"{total} samples in the load ({setup} in the setup left out): {total * per_sample_us / a.records:.0f} core-us per record")
    for name, n in counts.most_common():
        print(f"{100 * n / total:5.1f} %  {n * per_sample_us / a.records:5.0f} core-us/record  {name}")


if __name__ == "__main__":
    main()
