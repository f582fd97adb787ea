//! The cases that fit openCryptoki's reduced profile (no elliptic curves, no RFC 5649 or
//! AES-GCM: the ledger, tls and kek roles are refused, see docs/HSM.md), against the machine's
//! openCryptoki soft token, in a process of their own: openCryptoki 3.8 crashes in C_Initialize
//! in a process that has loaded kryoptic before.

mod common;

on_modules!(opencryptoki: OpenCryptoki => [
    pseudonyms_are_stable_hmacs_and_random_is_random,
    wrong_pin_is_reported_and_not_retried,
    missing_module_and_missing_token_are_named,
    the_shared_pseudonym_key_imports_once_and_gives_the_same_pseudonyms,
    opencryptoki_refuses_ledger_tls_and_kek_and_holds_the_rest,
    a_sharing_key_receives_data_keys_from_a_kek_on_another_module,
    opencryptoki_probe_reports_the_reduced_profile,
]);

