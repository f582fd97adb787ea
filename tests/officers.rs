//! Officer quorum and officers' smart cards at the console, against a real SoftHSM2 token (the
//! scenarios: `console/officers.rs`; the same on kryoptic: `console_kryoptic.rs`).

#![allow(clippy::unwrap_used, reason = "tests")]

mod support;

#[path = "console/officers.rs"]
mod officers;

on_module!(SoftHsm, officers => [
    destroy_needs_m_approvals_and_refuses_expired_replayed_forged_or_mismatched_ones,
    officers_are_added_and_removed_under_quorum_and_the_new_officer_signs_their_enrolment,
    an_officer_on_a_smart_card_enrols_approves_and_opens_their_backup_share,
]);
