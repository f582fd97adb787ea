//! The HSM boundary against real tokens: every case runs on SoftHSM2 and on kryoptic
//! (`common/cases.rs`). openCryptoki has its own test binary (`opencryptoki.rs`): its soft token
//! crashes in C_Initialize in a process that has loaded kryoptic before (docs/HSM.md).

mod common;

on_modules!(softhsm: SoftHsm, kryoptic: Kryoptic => [
    every_generated_key_is_sensitive_and_never_extractable,
    signatures_verify_both_ways_with_standard_tools,
    data_keys_wrap_unwrap_and_tampering_is_an_integrity_error,
    rotation_keeps_old_versions_for_unwrap_until_retired,
    pseudonyms_are_stable_hmacs_and_random_is_random,
    wrong_pin_is_reported_and_not_retried,
    missing_module_and_missing_token_are_named,
    pool_serves_many_threads_with_bounded_sessions,
    tls_signing_key_signs_inside_the_hsm,
    a_data_key_rewrapped_for_a_sharing_key_unwraps_to_the_same_bytes,
    data_keys_travel_to_a_peer_under_one_transport_key,
    transport_keys_are_replaced_and_forgotten_at_their_limits,
    the_shared_pseudonym_key_imports_once_and_gives_the_same_pseudonyms,
    rewrap_moves_a_data_key_to_the_active_kek_so_the_old_version_can_be_destroyed,
    wraps_keep_working_while_the_kek_rotates_under_them,
    readiness_and_the_probe_report_follow_the_keys,
    aes_gcm_wrapping_round_trips_and_detects_tampering,
    a_kek_the_module_cannot_use_turns_readiness_red_until_rotated,
    a_probe_a_missing_token_or_a_dropped_pool_beside_a_pool_leave_it_working,
    raw_ceilings_measure_every_operation_and_leave_the_token_as_it_was,
]);

on_modules!(kryoptic_cross: Kryoptic => [a_sharing_key_receives_data_keys_from_a_kek_on_another_module]);
