//! The security officer's console, `medgate keys`, against a real SoftHSM2 token (the scenarios:
//! `console/keys.rs`; the same on kryoptic: `console_kryoptic.rs`).

#![allow(clippy::unwrap_used, reason = "tests")]

mod support;

#[path = "console/keys.rs"]
mod keys;

on_module!(SoftHsm, keys => [
    csr_signed_in_the_hsm_passes_openssl_verification,
    list_rotate_retire_destroy_and_the_key_event_journal,
    a_wrong_pin_exits_77_and_does_not_burn_retries,
    an_unreadable_token_configuration_is_named,
    the_shared_pseudonym_key_is_imported_at_the_ceremony_only_once,
    a_pilot_consortium_ca_certifies_a_gateway_and_an_etcd_member_that_openssl_accepts,
]);
