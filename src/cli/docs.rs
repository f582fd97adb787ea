//! `medgate generate-docs --out DIR` (hidden; for packaging): the manual pages, one for
//! `medgate` and one for each command (`medgate-keys.1`, ...), and the bash, zsh and fish
//! completions, all from the command line's own definition so that they cannot drift from it.

use std::path::Path;

use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::exit::Failure;

pub(crate) fn generate(out: &Path) -> Result<(), Failure> {
    let io = |p: &Path, e: std::io::Error| Failure::runtime(format!("{}: {e}", p.display()));
    let man = out.join("man");
    let completions = out.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).map_err(|e| io(d, e))?;
    }
    let cmd = super::Cli::command();
    clap_mangen::generate_to(cmd.clone(), &man).map_err(|e| io(&man, e))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = cmd.clone();
        clap_complete::generate_to(shell, &mut cmd, "medgate", &completions).map_err(|e| io(&completions, e))?;
    }
    let pages = std::fs::read_dir(&man).map_err(|e| io(&man, e))?.count();
    println!("{pages} manual pages in {}, bash, zsh and fish completions in {}", man.display(), completions.display());
    Ok(())
}
