//! The officer's console (`console/keys.rs`) and the officers' quorum (`console/officers.rs`) on
//! a second PKCS#11 implementation, kryoptic (built by `scripts/install-deps.sh`): the same
//! scenarios as on SoftHSM2, each on its own kryoptic site. Where kryoptic cannot do something
//! the scenario asserts the documented refusal (the backup key, docs/HSM.md). Fails, never skips,
//! when kryoptic is missing.
//!
//! Its own test binary: kryoptic reads `KRYOPTIC_CONF` when it initialises, in this process and
//! in every `medgate` it starts, so the scenarios here take turns (`support::site_on`), and no
//! SoftHSM-only scenario shares the process. Left out: `an_unreadable_token_configuration_is_named`
//! (medgate names an unreadable SoftHSM configuration file; kryoptic's has no such diagnosis).

#![allow(clippy::unwrap_used, reason = "tests")]

mod support;

#[path = "console/keys.rs"]
mod keys;
#[path = "console/officers.rs"]
mod officers;

on_module!(Kryoptic, keys => [
    csr_signed_in_the_hsm_passes_openssl_verification,
    list_rotate_retire_destroy_and_the_key_event_journal,
    a_wrong_pin_exits_77_and_does_not_burn_retries,
    the_shared_pseudonym_key_is_imported_at_the_ceremony_only_once,
    a_pilot_consortium_ca_certifies_a_gateway_and_an_etcd_member_that_openssl_accepts,
]);

on_module!(Kryoptic, officers => [
    destroy_needs_m_approvals_and_refuses_expired_replayed_forged_or_mismatched_ones,
    officers_are_added_and_removed_under_quorum_and_the_new_officer_signs_their_enrolment,
    an_officer_on_a_smart_card_enrols_approves_and_opens_their_backup_share,
]);
