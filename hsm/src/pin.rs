//! The user PIN as a secret type: it cannot be printed or logged, and its memory is wiped on drop.
//! It comes from a file (mode 0600 or stricter) or from a systemd credential, never from the
//! configuration file or the command line.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Name of the systemd credential (`LoadCredential=hsm-pin:...`) that holds the PIN.
pub const CREDENTIAL_NAME: &str = "hsm-pin";

/// A token PIN. `Debug` prints a placeholder; the bytes are zeroized on drop.
#[derive(Clone)]
pub struct Pin(Zeroizing<String>);

/// Why a PIN could not be read. Names the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("PIN file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("PIN file {0}: is empty")]
    Empty(PathBuf),
    #[error("PIN file {path}: readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("no PIN: set [hsm] pin_file in the configuration or provide the systemd credential `{CREDENTIAL_NAME}`")]
    NotConfigured,
}

impl Pin {
    /// Reads a PIN from `path`: one line, trailing newline ignored. Refuses files that group or
    /// others can read.
    pub fn from_file(path: &Path) -> Result<Pin, PinError> {
        let io = |source| PinError::Io { path: path.to_path_buf(), source };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(PinError::Permissions { path: path.to_path_buf(), mode });
        }
        let raw = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
        let pin = raw.trim_end_matches(['\n', '\r']);
        if pin.is_empty() {
            return Err(PinError::Empty(path.to_path_buf()));
        }
        Ok(Pin(Zeroizing::new(pin.to_owned())))
    }

    /// The PIN from `$CREDENTIALS_DIRECTORY/hsm-pin` when systemd provides it, else from
    /// `pin_file`.
    pub fn resolve(pin_file: Option<&Path>) -> Result<Pin, PinError> {
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let p = Path::new(&dir).join(CREDENTIAL_NAME);
            if p.exists() {
                // systemd makes credentials 0400 for the service user; the mode check still holds.
                return Pin::from_file(&p);
            }
        }
        match pin_file {
            Some(p) => Pin::from_file(p),
            None => Err(PinError::NotConfigured),
        }
    }

    /// Builds a PIN from bytes already held in memory (token initialisation by a program).
    pub fn from_secret(s: Zeroizing<String>) -> Pin {
        Pin(s)
    }

    /// Its length in characters (tokens state PIN lengths in characters or bytes; medgate's
    /// PINs are ASCII, where both agree).
    pub(crate) fn len(&self) -> usize {
        self.0.chars().count()
    }

    pub(crate) fn to_auth(&self) -> cryptoki::types::AuthPin {
        cryptoki::types::AuthPin::from(self.0.as_str())
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn debug_never_shows_the_pin() {
        let p = Pin::from_secret(Zeroizing::new("123456".into()));
        assert_eq!(format!("{p:?}"), "Pin(<redacted>)");
    }

    #[test]
    fn pin_file_mode_and_content_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pin");
        let mut f = std::fs::File::create(&path).expect("create");
        f.write_all(b"4321\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = Pin::from_file(&path).expect_err("0644 must be refused");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let pin = Pin::from_file(&path).expect("0600 is fine");
        assert_eq!(pin.0.as_str(), "4321");
        std::fs::write(&path, "\n").expect("write");
        assert!(matches!(Pin::from_file(&path), Err(PinError::Empty(_))));
        let missing = dir.path().join("nope");
        let err = Pin::from_file(&missing).expect_err("missing");
        assert!(err.to_string().contains(&*missing.to_string_lossy()), "{err}");
    }
}
