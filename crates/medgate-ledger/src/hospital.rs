//! The hospital id rule, the one place it is written. A hospital id names a gateway everywhere:
//! in ledger entries, as the etcd user of its gateway, and as the organisation (O) and CN of its
//! consortium certificate. The configuration, member cards, membership entries and every entry
//! field that names a hospital are checked against it.

/// Longest hospital id, in bytes.
pub const MAX_HOSPITAL_ID_LEN: usize = 64;

/// What [`check_hospital_id`] requires, for messages.
pub const HOSPITAL_ID_RULE: &str =
    "1 to 64 characters from A-Z a-z 0-9 - _ . and not `root` (it is also an etcd user and a certificate name)";

/// Checks a hospital id: 1 to [`MAX_HOSPITAL_ID_LEN`] characters from `A-Z a-z 0-9 - _ .`, and
/// not `root` (etcd's administrator user). The error is [`HOSPITAL_ID_RULE`].
pub fn check_hospital_id(id: &str) -> Result<(), &'static str> {
    let ok = (1..=MAX_HOSPITAL_ID_LEN).contains(&id.len())
        && id != "root"
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(HOSPITAL_ID_RULE)
    }
}

/// Whether `id` is a valid hospital id ([`check_hospital_id`]).
pub fn is_hospital_id(id: &str) -> bool {
    check_hospital_id(id).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_for_every_hospital_id() {
        for ok in ["hospital-a", "h", "St.Mary_2", &"a".repeat(64)] {
            assert_eq!(check_hospital_id(ok), Ok(()), "{ok}");
        }
        for bad in ["", "root", "bad id", "a/b", "é", &"a".repeat(65), "a\nb"] {
            assert_eq!(check_hospital_id(bad), Err(HOSPITAL_ID_RULE), "{bad:?}");
        }
    }
}
