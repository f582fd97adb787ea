//! The bench's store-heavy steps that are not the gateway's work run in a child process (the
//! same binary, `medgate bench` with hidden arguments): the store ceiling, which writes hundreds
//! of megabytes into a throwaway database, and `--prefill`. In the bench's own process their
//! allocations stayed with the allocator and the resident memory printed for the gateway
//! counted them (several hundred MiB).

use std::path::Path;
use std::time::Duration;

use medgate_store::ceiling::WriteRate;

use super::rt_err;
use crate::exit::Failure;

/// Runs `medgate bench <args>` and returns its standard output; its standard error (progress
/// lines) goes to ours.
async fn run(args: &[String]) -> Result<String, Failure> {
    let exe = std::env::current_exe().map_err(rt_err)?;
    // Not `output()`: tokio's pipes standard error too, and the child's progress lines and
    // errors would be lost.
    let child = tokio::process::Command::new(exe)
        .arg("bench")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(rt_err)?;
    let out = child.wait_with_output().await.map_err(rt_err)?;
    if !out.status.success() {
        return Err(Failure::runtime(format!("bench child {args:?} failed: {}", out.status)));
    }
    String::from_utf8(out.stdout).map_err(rt_err)
}

/// The store's write+flush rate (see [`medgate_store::ceiling::write_flush_rate`]), measured by a
/// child process in `dir`.
pub async fn store_ceiling(dir: &Path, value_bytes: usize, group: usize, seconds: f64) -> Result<WriteRate, Failure> {
    let args = [
        "--store-ceiling".to_owned(),
        dir.display().to_string(),
        "--store-group".to_owned(),
        group.to_string(),
        "--store-value-bytes".to_owned(),
        value_bytes.to_string(),
        "--ceiling-seconds".to_owned(),
        seconds.to_string(),
    ];
    let out = run(&args).await?;
    let mut fields = out.split_whitespace().map(str::parse::<f64>);
    match (fields.next(), fields.next()) {
        (Some(Ok(values_per_second)), Some(Ok(flushes_per_second))) => Ok(WriteRate { values_per_second, flushes_per_second }),
        _ => Err(Failure::runtime(format!("bench child printed {out:?} for the store ceiling"))),
    }
}

/// The child's side of [`store_ceiling`]: measures and prints `values/s flushes/s`.
pub fn store_ceiling_main(dir: &Path, value_bytes: usize, group: usize, seconds: f64) -> Result<(), Failure> {
    if value_bytes == 0 || group == 0 || !seconds.is_finite() || seconds <= 0.0 {
        return Err(Failure::usage("--store-value-bytes, --store-group and --ceiling-seconds must be positive"));
    }
    let rate = medgate_store::ceiling::write_flush_rate(dir, value_bytes, group, Duration::from_secs_f64(seconds)).map_err(rt_err)?;
    println!("{} {}", rate.values_per_second, rate.flushes_per_second);
    Ok(())
}

/// Fills the vault under `state_dir` with `n` records (see [`super::prefill`]) in a child process.
pub async fn prefill(state_dir: &Path, n: usize, size: usize) -> Result<(), Failure> {
    let args = ["--prefill-into".to_owned(), state_dir.display().to_string(), "--prefill".to_owned(), n.to_string(), "--size".to_owned(), size.to_string()];
    run(&args).await.map(|_| ())
}

/// The child's side of [`prefill`].
pub fn prefill_main(state_dir: &Path, n: usize, size: usize) -> Result<(), Failure> {
    if n == 0 || size == 0 {
        return Err(Failure::usage("--prefill and --size must be positive"));
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(rt_err)?;
    rt.block_on(super::prefill::prefill(state_dir, n, size, super::load::PATIENTS * 20))
}
