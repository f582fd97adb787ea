//! The probe: what a PKCS#11 module and its tokens offer, and whether and how the token medgate
//! is configured for can hold each key role. One typed [`ProbeReport`], rendered for people
//! (`Display`, a table) and for scripts ([`ProbeReport::to_json`]). `medgate keys probe` prints
//! [`probe`]; at start-up the gateway refuses to serve when [`ProbeReport::refusals`] is not
//! empty; readiness ([`Hsm::ping`]) follows [`Hsm::readiness`].

use std::fmt;
use std::path::{Path, PathBuf};

use cryptoki::context::Pkcs11;
use cryptoki::error::Error as P11Error;
use cryptoki::session::{Session, UserType};
use cryptoki_sys::{CKF_LOGIN_REQUIRED, CKF_TOKEN_INITIALIZED, CKF_USER_PIN_INITIALIZED, CKF_WRITE_PROTECTED, CK_MECHANISM_TYPE};
use serde::Serialize;

use crate::error::{map_op_error, HsmError};
use crate::pin::Pin;
use crate::pool::{find_token, load_module, Ctx, Fail, Hsm, Op};
use crate::profile::{flag_names, kek_scheme_of, mechanism_name, mechanisms_of, profile_of, Acceptance, KekScheme, Profile, RoleStatus, TemplateSupport};
use crate::raw::Raw;
use crate::role::Role;

/// What C_GetInfo says about the library.
#[derive(Debug, Clone, Serialize)]
pub struct LibraryReport {
    pub manufacturer: String,
    pub description: String,
    pub library_version: String,
    pub cryptoki_version: String,
}

/// One mechanism of a slot.
#[derive(Debug, Clone, Serialize)]
pub struct MechanismReport {
    pub code: CK_MECHANISM_TYPE,
    pub name: String,
    pub min_key_size: u64,
    pub max_key_size: u64,
    pub flags: Vec<&'static str>,
}

/// A token as the module describes it.
#[derive(Debug, Clone, Serialize)]
pub struct TokenReport {
    pub label: String,
    pub manufacturer: String,
    pub model: String,
    pub serial: String,
    pub initialized: bool,
    pub user_pin_initialized: bool,
    pub login_required: bool,
    pub write_protected: bool,
    pub min_pin_len: u64,
    pub max_pin_len: u64,
    pub hardware_version: String,
    pub firmware_version: String,
    /// When cryptoki cannot parse the module's token information (openCryptoki writes a utcTime
    /// it cannot read), its error and the raw clock bytes. medgate reads the other fields itself.
    pub parse_error: Option<String>,
}

/// One slot.
#[derive(Debug, Clone, Serialize)]
pub struct SlotReport {
    pub id: u64,
    pub description: String,
    pub manufacturer: String,
    pub token_present: bool,
    pub token: Option<TokenReport>,
    /// The module's own error when it cannot give the token information at all.
    pub token_error: Option<String>,
    pub mechanisms: Vec<MechanismReport>,
    pub mechanisms_error: Option<String>,
}

/// Whether and how the token can hold one role.
#[derive(Debug, Clone, Serialize)]
pub struct RoleReport {
    pub role: Role,
    pub supported: bool,
    pub keygen: Option<String>,
    pub operation: Option<String>,
    pub how: Option<String>,
    /// Template attributes left out on this module.
    pub template: Vec<String>,
    /// With CKA_ALLOWED_MECHANISMS left out: the other mechanisms the key's usage flag admits.
    pub also_admitted: Vec<String>,
    /// Why the role is refused, naming the module and the mechanisms.
    pub refusal: Option<String>,
    pub missing: Vec<String>,
    /// The active key's state, when the probe could log in.
    pub key: Option<RoleStatus>,
}

/// Everything the probe found.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub module: PathBuf,
    pub library: Option<LibraryReport>,
    pub slots: Vec<SlotReport>,
    /// The label medgate looks for, and the slot that has it.
    pub token_label: String,
    pub token_slot: Option<u64>,
    /// Which optional template attributes the token takes (needs a login to find out).
    pub template: Option<TemplateSupport>,
    pub roles: Vec<RoleReport>,
    /// Things an officer must know: unreadable token information, a missing token, no login.
    pub problems: Vec<String>,
}

impl ProbeReport {
    /// The report as JSON (pretty-printed).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// One error per role the token cannot hold or whose active key cannot work, each naming
    /// the module, the role and the mechanism. Start-up refuses to serve unless this is empty.
    pub fn refusals(&self) -> Vec<HsmError> {
        let mut out = Vec::new();
        for r in &self.roles {
            if let Some(reason) = &r.refusal {
                out.push(HsmError::RoleUnsupported { module: self.module.clone(), role: r.role, reason: reason.clone() });
            } else if let Some(e) = r.key.as_ref().and_then(|k| k.error(&self.module)) {
                out.push(e);
            }
        }
        out
    }
}

fn version(v: cryptoki::types::Version) -> String {
    format!("{}.{}", v.major(), v.minor())
}

fn library_report(pkcs11: &Pkcs11) -> Option<LibraryReport> {
    pkcs11.get_library_info().ok().map(|i| LibraryReport {
        manufacturer: i.manufacturer_id().trim_end().to_owned(),
        description: i.library_description().trim_end().to_owned(),
        library_version: version(i.library_version()),
        cryptoki_version: version(i.cryptoki_version()),
    })
}

fn slot_reports(pkcs11: &Pkcs11, raw: &Raw, problems: &mut Vec<String>) -> Result<Vec<SlotReport>, HsmError> {
    let mut out = Vec::new();
    for slot in pkcs11.get_all_slots().map_err(|e| map_op_error(e, None))? {
        let (description, manufacturer, token_present) = match pkcs11.get_slot_info(slot) {
            Ok(i) => (
                i.slot_description().trim_end_matches([' ', '\0']).to_owned(),
                i.manufacturer_id().trim_end_matches([' ', '\0']).to_owned(),
                i.token_present(),
            ),
            Err(e) => (format!("(slot information unreadable: {e})"), String::new(), true),
        };
        let mut report = SlotReport {
            id: slot.id(),
            description,
            manufacturer,
            token_present,
            token: None,
            token_error: None,
            mechanisms: Vec::new(),
            mechanisms_error: None,
        };
        if token_present {
            match raw.token_info(slot.id()) {
                Ok(t) => {
                    let parse_error = pkcs11.get_token_info(slot).err().map(|e| {
                        let msg = format!(
                            "cryptoki cannot parse the token information: {e} (utcTime bytes {:?}); medgate reads the other fields itself",
                            String::from_utf8_lossy(&t.utc_time)
                        );
                        problems.push(format!("slot {}: {msg}", slot.id()));
                        msg
                    });
                    report.token = Some(TokenReport {
                        label: t.label,
                        manufacturer: t.manufacturer,
                        model: t.model,
                        serial: t.serial,
                        initialized: t.flags & CKF_TOKEN_INITIALIZED != 0,
                        user_pin_initialized: t.flags & CKF_USER_PIN_INITIALIZED != 0,
                        login_required: t.flags & CKF_LOGIN_REQUIRED != 0,
                        write_protected: t.flags & CKF_WRITE_PROTECTED != 0,
                        min_pin_len: t.min_pin_len,
                        max_pin_len: t.max_pin_len,
                        hardware_version: format!("{}.{}", t.hardware_version.0, t.hardware_version.1),
                        firmware_version: format!("{}.{}", t.firmware_version.0, t.firmware_version.1),
                        parse_error,
                    });
                }
                Err(e) => {
                    problems.push(format!("slot {}: the module cannot give its token information: {e}", slot.id()));
                    report.token_error = Some(e.to_string());
                }
            }
            match mechanisms_of(raw, slot) {
                Ok(m) => {
                    report.mechanisms = m
                        .0
                        .values()
                        .map(|i| MechanismReport {
                            code: i.code,
                            name: mechanism_name(i.code),
                            min_key_size: i.min_key_size,
                            max_key_size: i.max_key_size,
                            flags: flag_names(i.flags),
                        })
                        .collect();
                }
                Err(e) => report.mechanisms_error = Some(e.to_string()),
            }
        }
        out.push(report);
    }
    Ok(out)
}

fn role_reports(profile: &Profile, statuses: Option<&[RoleStatus]>, module: &Path) -> Vec<RoleReport> {
    Role::ALL
        .into_iter()
        .map(|role| {
            let key = statuses.and_then(|s| s.iter().find(|k| k.role() == role).cloned());
            match profile.plan(role) {
                Ok(plan) => RoleReport {
                    role,
                    supported: true,
                    keygen: Some(mechanism_name(plan.keygen)),
                    operation: Some(mechanism_name(plan.operation)),
                    how: Some(plan.how.clone()),
                    template: profile.template.adaptations(),
                    also_admitted: if profile.template.allowed_mechanisms.usable() { Vec::new() } else { profile.also_admitted(role) },
                    refusal: None,
                    missing: Vec::new(),
                    key,
                },
                Err(r) => RoleReport {
                    role,
                    supported: false,
                    keygen: None,
                    operation: None,
                    how: None,
                    template: Vec::new(),
                    also_admitted: Vec::new(),
                    refusal: Some(
                        HsmError::RoleUnsupported { module: module.to_path_buf(), role, reason: r.to_string() }.to_string(),
                    ),
                    missing: r.missing.clone(),
                    key,
                },
            }
        })
        .collect()
}

/// Probes `module` on its own: loads and initialises it, lists every slot, token and mechanism,
/// and decides each role for the token labelled `token_label`. With a `pin`, it also logs in to
/// try the template attributes and to check the active keys; without one, those stay untested.
/// The module is finalised at the end unless another user in the process still holds it (a
/// running [`Hsm`] has [`Hsm::probe_report`], over its own connection). The probe never logs
/// out: login is application-wide, and closing its session ends its login unless a pool of the
/// process is logged in to the same token.
pub fn probe(module: &Path, token_label: &str, pin: Option<&Pin>) -> Result<ProbeReport, HsmError> {
    let (pkcs11, raw, hold) = load_module(module)?;
    let result = (|| {
        let mut problems = Vec::new();
        let library = library_report(&pkcs11);
        let slots = slot_reports(&pkcs11, &raw, &mut problems)?;
        let slot = match find_token(&pkcs11, &raw, module, token_label) {
            Ok(s) => Some(s),
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        };
        let mut report = ProbeReport {
            module: module.to_path_buf(),
            library,
            slots,
            token_label: token_label.to_owned(),
            token_slot: slot.map(|s| s.id()),
            template: None,
            roles: Vec::new(),
            problems,
        };
        let Some(slot) = slot else { return Ok(report) };
        let session = pkcs11.open_rw_session(slot).map_err(|e| map_op_error(e, None))?;
        let logged_in = match pin {
            Some(pin) => match session.login(UserType::User, Some(&pin.to_auth())) {
                Ok(()) | Err(P11Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => true,
                Err(P11Error::Pkcs11(cryptoki::error::RvError::PinIncorrect, _)) => return Err(HsmError::WrongPin),
                Err(e) => return Err(map_op_error(e, None)),
            },
            None => {
                report.problems.push("no user PIN given: template attributes and keys were not checked".into());
                false
            }
        };
        let profile = profile_of(&raw, slot, logged_in.then_some(&session)).map_err(|e| map_op_error(e, None))?;
        let statuses = if logged_in { Some(statuses_in(&raw, &session, &profile).map_err(fail_to_hsm)?) } else { None };
        report.template = Some(profile.template.clone());
        report.roles = role_reports(&profile, statuses.as_deref(), module);
        Ok(report)
    })();
    drop(hold);
    result
}

fn fail_to_hsm(f: Fail) -> HsmError {
    match f {
        Fail::P11(e, ctx) => map_op_error(e, ctx.as_ref()),
        Fail::Hsm(e) => e,
    }
}

/// The active version of each role and whether it can work here, on a logged-in session.
fn statuses_in(raw: &Raw, s: &Session, profile: &Profile) -> Result<Vec<RoleStatus>, Fail> {
    let mut out = Vec::new();
    for role in Role::ALL {
        let plan = match profile.plan(role) {
            Ok(p) => p,
            Err(r) => {
                out.push(RoleStatus::Refused { role, reason: r.to_string() });
                continue;
            }
        };
        let class = Hsm::private_class(role);
        let found = crate::pool::find_keys_in(s, class)?;
        let Some((label, h)) = found.into_iter().filter(|(l, _)| l.role == role && !l.retired).max_by_key(|(l, _)| l.version) else {
            out.push(RoleStatus::NoKey { role });
            continue;
        };
        let status = match role {
            Role::Kek => match kek_scheme_of(raw, s, profile, h.handle()) {
                Ok(scheme) => RoleStatus::Ready { role, version: label.version, mechanism: mechanism_name(scheme.mechanism()) },
                Err(reason) => RoleStatus::Unusable { role, version: label.version, reason },
            },
            _ => match raw.allowed_mechanisms(s.handle(), h.handle())? {
                Some(list) if !list.contains(&plan.operation) => RoleStatus::Unusable {
                    role,
                    version: label.version,
                    reason: format!(
                        "its CKA_ALLOWED_MECHANISMS ({}) does not include {}, the mechanism this module offers for the role",
                        list.iter().map(|c| mechanism_name(*c)).collect::<Vec<_>>().join(", "),
                        mechanism_name(plan.operation)
                    ),
                },
                _ => RoleStatus::Ready { role, version: label.version, mechanism: mechanism_name(plan.operation) },
            },
        };
        out.push(status);
    }
    Ok(out)
}

impl Ctx {
    /// The wrap scheme of the KEK object `h`, cached for the life of the keys.
    pub(crate) fn kek_scheme(&self, s: &Session, h: cryptoki::object::ObjectHandle, version: u32) -> Result<KekScheme, Fail> {
        if let Some(hit) = self.kek_schemes.lock().unwrap_or_else(|p| p.into_inner()).get(&h.handle()) {
            return Ok(*hit);
        }
        let scheme = kek_scheme_of(&self.raw, s, &self.profile, h.handle())
            .map_err(|reason| HsmError::KeyUnusable { role: Role::Kek, reason: format!("version {version}: {reason}") })?;
        self.kek_schemes.lock().unwrap_or_else(|p| p.into_inner()).insert(h.handle(), scheme);
        Ok(scheme)
    }
}

impl Hsm {
    /// Readiness: the HSM answers (C_GetSessionInfo on a pooled session, recovering if needed),
    /// the token can hold every role, and every role's active key can do its operation with
    /// what the module offers. A role with no key yet is not held against it. The first
    /// problem is the error; [`Hsm::readiness`] gives every role's state.
    pub fn ping(&self) -> Result<(), HsmError> {
        self.run(Op::Admin, 1, true, |s, _| Ok(s.get_session_info().map(|_| ())?))?;
        for status in self.readiness()? {
            if let Some(e) = status.error(self.module()) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// The state of each role on the token: refused by the module, no key yet, or whether the
    /// active key can do its operation here. Cached until the keys change.
    pub fn readiness(&self) -> Result<Vec<RoleStatus>, HsmError> {
        self.run(Op::Admin, 0, true, |s, ctx| {
            if let Some(hit) = ctx.readiness.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                return Ok(hit.clone());
            }
            let statuses = statuses_in(&ctx.raw, s, &ctx.profile)?;
            *ctx.readiness.lock().unwrap_or_else(|p| p.into_inner()) = Some(statuses.clone());
            Ok(statuses)
        })
    }

    /// The probe report for this pool's module and token, over the pool's own connection (it
    /// does not finalise the module): for start-up checks and the admin interface.
    pub fn probe_report(&self) -> Result<ProbeReport, HsmError> {
        let statuses = self.readiness()?;
        let module = self.module().to_path_buf();
        let label = self.config().token_label.clone();
        self.run(Op::Admin, 0, true, |_, ctx| {
            let mut problems = Vec::new();
            let slots = slot_reports(&ctx.pkcs11, &ctx.raw, &mut problems)?;
            Ok(ProbeReport {
                module: module.clone(),
                library: library_report(&ctx.pkcs11),
                slots,
                token_label: label.clone(),
                token_slot: Some(ctx.slot.id()),
                template: Some(ctx.profile.template.clone()),
                roles: role_reports(&ctx.profile, Some(&statuses), &module),
                problems,
            })
        })
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "PKCS#11 module  {}", self.module.display())?;
        if let Some(l) = &self.library {
            writeln!(f, "library         {} ({}), version {}, Cryptoki {}", l.description, l.manufacturer, l.library_version, l.cryptoki_version)?;
        }
        for s in &self.slots {
            writeln!(f)?;
            writeln!(f, "slot {}  {}{}", s.id, s.description, if s.token_present { "" } else { "  (no token)" })?;
            if let Some(t) = &s.token {
                writeln!(f, "  token {:?}  {} {} serial {}", t.label, t.manufacturer, t.model, t.serial)?;
                writeln!(
                    f,
                    "  initialised {}, user PIN set {}, login required {}, write-protected {}, PIN length {}-{}, hardware {}, firmware {}",
                    yes(t.initialized),
                    yes(t.user_pin_initialized),
                    yes(t.login_required),
                    yes(t.write_protected),
                    t.min_pin_len,
                    t.max_pin_len,
                    t.hardware_version,
                    t.firmware_version
                )?;
                if let Some(e) = &t.parse_error {
                    writeln!(f, "  note: {e}")?;
                }
            }
            if let Some(e) = &s.token_error {
                writeln!(f, "  token information unreadable: {e}")?;
            }
            if let Some(e) = &s.mechanisms_error {
                writeln!(f, "  mechanisms unreadable: {e}")?;
            } else if s.token_present && self.token_slot.is_some_and(|t| t != s.id) {
                writeln!(f, "  {} mechanisms (listed for the medgate token's slot only; all in the JSON)", s.mechanisms.len())?;
            } else if s.token_present {
                writeln!(f, "  {} mechanisms:", s.mechanisms.len())?;
                writeln!(f, "    {:<48} {:>11}  flags", "mechanism", "key sizes")?;
                for m in &s.mechanisms {
                    writeln!(f, "    {:<48} {:>11}  {}", m.name, format!("{}-{}", m.min_key_size, m.max_key_size), m.flags.join(" "))?;
                }
            }
        }
        writeln!(f)?;
        match self.token_slot {
            Some(slot) => writeln!(f, "key roles on token {:?} (slot {slot}):", self.token_label)?,
            None => writeln!(f, "token {:?} not found: no key roles to judge", self.token_label)?,
        }
        if !self.roles.is_empty() {
            writeln!(f, "  {:<10} {:<9} {:<40} {:<40} active key", "role", "can hold", "key generation", "operation")?;
            for r in &self.roles {
                let key = r.key.as_ref().map_or("not checked (no login)".to_owned(), |k| k.to_string());
                writeln!(
                    f,
                    "  {:<10} {:<9} {:<40} {:<40} {}",
                    r.role.as_str(),
                    yes(r.supported),
                    r.keygen.as_deref().unwrap_or("-"),
                    r.operation.as_deref().unwrap_or("-"),
                    if r.supported { key } else { "-".to_owned() }
                )?;
                if let Some(how) = &r.how {
                    writeln!(f, "  {:<10} how: {how}", "")?;
                }
                if let Some(why) = &r.refusal {
                    writeln!(f, "  {:<10} REFUSED: {why}", "")?;
                }
                if !r.also_admitted.is_empty() {
                    writeln!(f, "  {:<10} without CKA_ALLOWED_MECHANISMS the key's usage flag also admits: {}", "", r.also_admitted.join(", "))?;
                }
            }
        }
        if let Some(t) = &self.template {
            let adaptations = t.adaptations();
            if adaptations.is_empty() {
                let untested: Vec<&str> = [("CKA_ALLOWED_MECHANISMS", &t.allowed_mechanisms), ("CKA_COPYABLE", &t.copyable), ("CKA_DESTROYABLE", &t.destroyable)]
                    .into_iter()
                    .filter(|(_, a)| matches!(a, Acceptance::Untested(_)))
                    .map(|(n, _)| n)
                    .collect();
                if untested.is_empty() {
                    writeln!(f, "key templates: full (the module accepts every attribute medgate writes)")?;
                } else {
                    writeln!(f, "key templates: full; not tried: {}", untested.join(", "))?;
                }
            } else {
                writeln!(f, "key templates adapted: {}", adaptations.join("; "))?;
            }
        }
        if !self.problems.is_empty() {
            writeln!(f, "problems:")?;
            for p in &self.problems {
                writeln!(f, "  - {p}")?;
            }
        }
        Ok(())
    }
}
