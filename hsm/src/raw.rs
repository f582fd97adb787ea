//! The few PKCS#11 calls made without cryptoki's safe wrappers, and why:
//!
//! * cryptoki 0.12 knows mechanism codes only from its own list. CKM_AES_KEY_WRAP_KWP (0x210B,
//!   PKCS#11 3.x; how kryoptic names RFC 5649) is not on it, so C_GetMechanismList drops it,
//!   C_GetMechanismInfo, C_WrapKey and C_UnwrapKey cannot be asked for it, and a key whose
//!   CKA_ALLOWED_MECHANISMS holds it can be neither created nor read.
//! * cryptoki parses the whole CK_TOKEN_INFO or nothing; openCryptoki 3.8 writes a utcTime that
//!   it cannot parse, which would hide the token. [`Raw::token_info`] reads the fields medgate
//!   needs and keeps the clock as bytes.
//! * C_WrapKey through cryptoki asks the module for the length first and the module computes the
//!   wrap twice; [`Raw::wrap_key`] passes a buffer of the right size at once (the hot path).
//!   cryptoki's C_Sign, C_Encrypt and C_Decrypt ask for the length first too (three calls where
//!   two do): [`Raw::sign`] and [`Raw::aes_gcm`] pass a buffer of the known size with the one
//!   call after the Init (the per-record and per-batch hot paths).
//!
//! The module is the same shared object cryptoki loaded (the dynamic loader hands back the
//! library already in the process), so sessions and object handles are shared. Every call goes
//! through the module's own function list. Errors come back as cryptoki errors, so they are
//! mapped like every other module error.

#![allow(unsafe_code, reason = "raw PKCS#11 calls that cryptoki 0.12 cannot make; each block states its safety argument")]

use std::path::Path;

use cryptoki::context::Function;
use cryptoki::error::{Error, Rv};
use cryptoki::object::Attribute;
use cryptoki_sys::{
    CK_ATTRIBUTE, CK_BYTE, CK_FUNCTION_LIST, CK_MECHANISM, CK_MECHANISM_INFO, CK_MECHANISM_TYPE, CK_OBJECT_HANDLE, CK_SESSION_HANDLE,
    CK_SLOT_ID, CK_TOKEN_INFO, CK_ULONG, CKA_ALLOWED_MECHANISMS, CK_GCM_PARAMS, CKM_AES_GCM,
};

/// CKM_AES_KEY_WRAP_KWP (PKCS#11 3.0), absent from cryptoki 0.12's list.
pub const CKM_AES_KEY_WRAP_KWP: CK_MECHANISM_TYPE = 0x210B;

/// The token fields medgate reads, parsed leniently: text fields are trimmed UTF-8 (lossy), the
/// clock is kept as it came.
#[derive(Debug, Clone)]
pub(crate) struct TokenInfoRaw {
    pub label: String,
    pub manufacturer: String,
    pub model: String,
    pub serial: String,
    pub flags: CK_ULONG,
    pub min_pin_len: CK_ULONG,
    pub max_pin_len: CK_ULONG,
    pub hardware_version: (u8, u8),
    pub firmware_version: (u8, u8),
    pub utc_time: [u8; 16],
}

/// The module's function list, with the library kept loaded for as long as it is used.
pub(crate) struct Raw {
    _lib: cryptoki_sys::Pkcs11,
    fl: CK_FUNCTION_LIST,
}

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Raw(PKCS#11 function list)")
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim_end_matches([' ', '\0']).to_owned()
}

fn check(rv: cryptoki_sys::CK_RV, function: Function) -> Result<(), Error> {
    Rv::from(rv).into_result(function)
}

/// A module that lacks the function entirely answers like one that does not support it.
fn unsupported(function: Function) -> Error {
    Error::Pkcs11(cryptoki::error::RvError::FunctionNotSupported, function)
}

impl Raw {
    /// Loads `module` (already loaded by cryptoki: this takes another reference) and reads its
    /// function list.
    pub(crate) fn load(module: &Path) -> Result<Raw, String> {
        // SAFETY: loading a shared object runs its initialisers. This is the PKCS#11 module that
        // cryptoki has just loaded from the same path, so the loader returns the library already
        // mapped into the process and runs nothing new.
        let lib = unsafe { cryptoki_sys::Pkcs11::new(module) }.map_err(|e| e.to_string())?;
        if lib.C_GetFunctionList.is_err() {
            return Err("the module exports no C_GetFunctionList".into());
        }
        let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
        // SAFETY: C_GetFunctionList is present (checked above) and writes one pointer to the
        // module's static function list into `list`.
        let rv = unsafe { lib.C_GetFunctionList(&mut list) };
        if rv != cryptoki_sys::CKR_OK || list.is_null() {
            return Err(format!("C_GetFunctionList returned 0x{rv:x}"));
        }
        // SAFETY: `list` is non-null and points to the module's CK_FUNCTION_LIST, which lives as
        // long as the library stays loaded; it is copied (function pointers and a version).
        let fl = unsafe { *list };
        Ok(Raw { _lib: lib, fl })
    }

    /// Every mechanism code the slot's token offers, known to cryptoki or not.
    pub(crate) fn mechanism_list(&self, slot: CK_SLOT_ID) -> Result<Vec<CK_MECHANISM_TYPE>, Error> {
        let f = self.fl.C_GetMechanismList.ok_or_else(|| unsupported(Function::GetMechanismList))?;
        let mut count: CK_ULONG = 0;
        // SAFETY: a null list asks only for the count, written to `count`.
        check(unsafe { f(slot, std::ptr::null_mut(), &mut count) }, Function::GetMechanismList)?;
        let mut list = vec![0 as CK_MECHANISM_TYPE; count as usize];
        // SAFETY: `list` has room for `count` entries; the module writes at most that many and
        // updates `count`.
        check(unsafe { f(slot, list.as_mut_ptr(), &mut count) }, Function::GetMechanismList)?;
        list.truncate(count as usize);
        Ok(list)
    }

    /// C_GetMechanismInfo for any mechanism code: (min key size, max key size, flags).
    pub(crate) fn mechanism_info(&self, slot: CK_SLOT_ID, mechanism: CK_MECHANISM_TYPE) -> Result<(CK_ULONG, CK_ULONG, CK_ULONG), Error> {
        let f = self.fl.C_GetMechanismInfo.ok_or_else(|| unsupported(Function::GetMechanismInfo))?;
        let mut info = CK_MECHANISM_INFO { ulMinKeySize: 0, ulMaxKeySize: 0, flags: 0 };
        // SAFETY: `info` is a valid CK_MECHANISM_INFO for the module to fill.
        check(unsafe { f(slot, mechanism, &mut info) }, Function::GetMechanismInfo)?;
        Ok((info.ulMinKeySize, info.ulMaxKeySize, info.flags))
    }

    /// C_GetTokenInfo, parsed leniently (see the module documentation).
    pub(crate) fn token_info(&self, slot: CK_SLOT_ID) -> Result<TokenInfoRaw, Error> {
        let f = self.fl.C_GetTokenInfo.ok_or_else(|| unsupported(Function::GetTokenInfo))?;
        let mut info = CK_TOKEN_INFO {
            label: [0; 32],
            manufacturerID: [0; 32],
            model: [0; 16],
            serialNumber: [0; 16],
            flags: 0,
            ulMaxSessionCount: 0,
            ulSessionCount: 0,
            ulMaxRwSessionCount: 0,
            ulRwSessionCount: 0,
            ulMaxPinLen: 0,
            ulMinPinLen: 0,
            ulTotalPublicMemory: 0,
            ulFreePublicMemory: 0,
            ulTotalPrivateMemory: 0,
            ulFreePrivateMemory: 0,
            hardwareVersion: cryptoki_sys::CK_VERSION { major: 0, minor: 0 },
            firmwareVersion: cryptoki_sys::CK_VERSION { major: 0, minor: 0 },
            utcTime: [0; 16],
        };
        // SAFETY: `info` is a valid CK_TOKEN_INFO for the module to fill.
        check(unsafe { f(slot, &mut info) }, Function::GetTokenInfo)?;
        Ok(TokenInfoRaw {
            label: text(&info.label),
            manufacturer: text(&info.manufacturerID),
            model: text(&info.model),
            serial: text(&info.serialNumber),
            flags: info.flags,
            min_pin_len: info.ulMinPinLen,
            max_pin_len: info.ulMaxPinLen,
            hardware_version: (info.hardwareVersion.major, info.hardwareVersion.minor),
            firmware_version: (info.firmwareVersion.major, info.firmwareVersion.minor),
            utc_time: info.utcTime,
        })
    }

    /// C_WrapKey with a parameterless mechanism and a buffer of `capacity` bytes (the exact
    /// output size for RFC 5649: ceil(n/8)*8 + 8). A module that needs more says
    /// CKR_BUFFER_TOO_SMALL with the size, and the call is repeated once with that size.
    pub(crate) fn wrap_key(
        &self,
        session: CK_SESSION_HANDLE,
        mechanism: CK_MECHANISM_TYPE,
        wrapping_key: CK_OBJECT_HANDLE,
        key: CK_OBJECT_HANDLE,
        capacity: usize,
    ) -> Result<Vec<u8>, Error> {
        let f = self.fl.C_WrapKey.ok_or_else(|| unsupported(Function::WrapKey))?;
        let mut mech = CK_MECHANISM { mechanism, pParameter: std::ptr::null_mut(), ulParameterLen: 0 };
        let mut out = vec![0u8; capacity];
        for _ in 0..2 {
            let mut len = out.len() as CK_ULONG;
            // SAFETY: `mech` is a parameterless CK_MECHANISM; `out` has room for `len` bytes; the
            // module writes at most `len` bytes and sets `len` to the size of the wrapped key.
            let rv = unsafe { f(session, &mut mech, wrapping_key, key, out.as_mut_ptr(), &mut len) };
            if rv == cryptoki_sys::CKR_BUFFER_TOO_SMALL && (len as usize) > out.len() {
                let small = std::mem::replace(&mut out, vec![0u8; len as usize]);
                drop(zeroize::Zeroizing::new(small));
                continue;
            }
            check(rv, Function::WrapKey)?;
            out.truncate(len as usize);
            return Ok(out);
        }
        Err(Error::Pkcs11(cryptoki::error::RvError::BufferTooSmall, Function::WrapKey))
    }

    /// C_UnwrapKey with a parameterless mechanism; the new object gets `template`.
    pub(crate) fn unwrap_key(
        &self,
        session: CK_SESSION_HANDLE,
        mechanism: CK_MECHANISM_TYPE,
        unwrapping_key: CK_OBJECT_HANDLE,
        wrapped: &[u8],
        template: &[Attribute],
    ) -> Result<CK_OBJECT_HANDLE, Error> {
        self.unwrap_key_allowed(session, mechanism, unwrapping_key, wrapped, template, None)
    }

    /// C_GenerateKey with `template` plus, if given, CKA_ALLOWED_MECHANISMS holding raw codes.
    pub(crate) fn generate_key(
        &self,
        session: CK_SESSION_HANDLE,
        mechanism: CK_MECHANISM_TYPE,
        template: &[Attribute],
        allowed: Option<&[CK_MECHANISM_TYPE]>,
    ) -> Result<CK_OBJECT_HANDLE, Error> {
        let f = self.fl.C_GenerateKey.ok_or_else(|| unsupported(Function::GenerateKey))?;
        let mut mech = CK_MECHANISM { mechanism, pParameter: std::ptr::null_mut(), ulParameterLen: 0 };
        let mut allowed = allowed.map(<[CK_MECHANISM_TYPE]>::to_vec);
        let mut attrs: Vec<CK_ATTRIBUTE> = template.iter().map(CK_ATTRIBUTE::from).collect();
        if let Some(list) = allowed.as_mut() {
            attrs.push(allowed_attribute(list));
        }
        let mut handle: CK_OBJECT_HANDLE = 0;
        // SAFETY: the CK_ATTRIBUTEs point into `template` and `allowed`, both alive for the call;
        // the module writes one handle into `handle`.
        let rv = unsafe { f(session, &mut mech, attrs.as_mut_ptr(), attrs.len() as CK_ULONG, &mut handle) };
        check(rv, Function::GenerateKey)?;
        Ok(handle)
    }

    /// C_GenerateKeyPair with the two templates; CKA_ALLOWED_MECHANISMS (raw codes), if given, is
    /// added to both halves.
    pub(crate) fn generate_key_pair(
        &self,
        session: CK_SESSION_HANDLE,
        mechanism: CK_MECHANISM_TYPE,
        public: &[Attribute],
        private: &[Attribute],
        allowed: Option<&[CK_MECHANISM_TYPE]>,
    ) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE), Error> {
        let f = self.fl.C_GenerateKeyPair.ok_or_else(|| unsupported(Function::GenerateKeyPair))?;
        let mut mech = CK_MECHANISM { mechanism, pParameter: std::ptr::null_mut(), ulParameterLen: 0 };
        let mut allowed_pub = allowed.map(<[CK_MECHANISM_TYPE]>::to_vec);
        let mut allowed_priv = allowed.map(<[CK_MECHANISM_TYPE]>::to_vec);
        let mut pub_attrs: Vec<CK_ATTRIBUTE> = public.iter().map(CK_ATTRIBUTE::from).collect();
        let mut priv_attrs: Vec<CK_ATTRIBUTE> = private.iter().map(CK_ATTRIBUTE::from).collect();
        if let (Some(a), Some(b)) = (allowed_pub.as_mut(), allowed_priv.as_mut()) {
            pub_attrs.push(allowed_attribute(a));
            priv_attrs.push(allowed_attribute(b));
        }
        let (mut hpub, mut hpriv): (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) = (0, 0);
        // SAFETY: both attribute arrays point into templates and lists alive for the call; the
        // module writes one handle into each of `hpub` and `hpriv`.
        let rv = unsafe {
            f(
                session,
                &mut mech,
                pub_attrs.as_mut_ptr(),
                pub_attrs.len() as CK_ULONG,
                priv_attrs.as_mut_ptr(),
                priv_attrs.len() as CK_ULONG,
                &mut hpub,
                &mut hpriv,
            )
        };
        check(rv, Function::GenerateKeyPair)?;
        Ok((hpub, hpriv))
    }

    /// CKA_ALLOWED_MECHANISMS of an object as raw codes; `None` when the module does not keep the
    /// attribute for it (CKR_ATTRIBUTE_TYPE_INVALID) or it is empty (no restriction).
    pub(crate) fn allowed_mechanisms(&self, session: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE) -> Result<Option<Vec<CK_MECHANISM_TYPE>>, Error> {
        let f = self.fl.C_GetAttributeValue.ok_or_else(|| unsupported(Function::GetAttributeValue))?;
        let mut attr = CK_ATTRIBUTE { type_: CKA_ALLOWED_MECHANISMS, pValue: std::ptr::null_mut(), ulValueLen: 0 };
        // SAFETY: a null pValue asks only for the length, written to `attr.ulValueLen`.
        let rv = unsafe { f(session, object, &mut attr, 1) };
        if rv == cryptoki_sys::CKR_ATTRIBUTE_TYPE_INVALID || attr.ulValueLen == cryptoki_sys::CK_UNAVAILABLE_INFORMATION {
            return Ok(None);
        }
        check(rv, Function::GetAttributeValue)?;
        let n = attr.ulValueLen as usize / std::mem::size_of::<CK_MECHANISM_TYPE>();
        if n == 0 {
            return Ok(None);
        }
        let mut list = vec![0 as CK_MECHANISM_TYPE; n];
        attr.pValue = list.as_mut_ptr() as *mut std::ffi::c_void;
        attr.ulValueLen = (n * std::mem::size_of::<CK_MECHANISM_TYPE>()) as CK_ULONG;
        // SAFETY: pValue points to `list`, which has room for ulValueLen bytes.
        check(unsafe { f(session, object, &mut attr, 1) }, Function::GetAttributeValue)?;
        list.truncate(attr.ulValueLen as usize / std::mem::size_of::<CK_MECHANISM_TYPE>());
        Ok(Some(list))
    }
}

/// The one-part operations with an Init call before them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnePart {
    Sign,
    Encrypt,
    Decrypt,
}

impl Raw {
    /// C_SignInit + C_Sign with a parameterless mechanism (CKM_ECDSA, CKM_SHA256_HMAC) and a
    /// buffer of `capacity` bytes (64 for a P-256 r||s, 32 for an HMAC-SHA256): two calls.
    pub(crate) fn sign(&self, session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_TYPE, key: CK_OBJECT_HANDLE, data: &[u8], capacity: usize) -> Result<Vec<u8>, Error> {
        let mut mech = CK_MECHANISM { mechanism, pParameter: std::ptr::null_mut(), ulParameterLen: 0 };
        self.one_part(OnePart::Sign, session, &mut mech, key, data, capacity)
    }

    /// AES-GCM with a 128-bit tag in one C_EncryptInit + C_Encrypt (or C_DecryptInit +
    /// C_Decrypt) pair with an output buffer of the exact size: two calls. `input` is the
    /// plaintext (encrypt) or ciphertext || tag (decrypt).
    pub(crate) fn aes_gcm(&self, session: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE, encrypt: bool, iv: &[u8], aad: &[u8], input: &[u8]) -> Result<Vec<u8>, Error> {
        let (mut iv, mut aad) = (iv.to_vec(), aad.to_vec());
        let mut params = CK_GCM_PARAMS {
            pIv: iv.as_mut_ptr(),
            ulIvLen: iv.len() as CK_ULONG,
            ulIvBits: (iv.len() * 8) as CK_ULONG,
            pAAD: aad.as_mut_ptr(),
            ulAADLen: aad.len() as CK_ULONG,
            ulTagBits: 128,
        };
        let mut mech = CK_MECHANISM {
            mechanism: CKM_AES_GCM,
            pParameter: &mut params as *mut CK_GCM_PARAMS as *mut std::ffi::c_void,
            ulParameterLen: std::mem::size_of::<CK_GCM_PARAMS>() as CK_ULONG,
        };
        // Encrypting adds the 16-byte tag; decrypting gets a buffer as long as its input (some
        // modules check against the input length rather than the plaintext length).
        let (op, capacity) = if encrypt { (OnePart::Encrypt, input.len() + 16) } else { (OnePart::Decrypt, input.len()) };
        self.one_part(op, session, &mut mech, key, input, capacity)
    }

    /// The Init call of `op`, then the one-part call with a buffer of `capacity` bytes. A module
    /// that needs more says CKR_BUFFER_TOO_SMALL with the size (the operation stays active) and
    /// the call is repeated once with that size.
    fn one_part(&self, op: OnePart, session: CK_SESSION_HANDLE, mech: &mut CK_MECHANISM, key: CK_OBJECT_HANDLE, input: &[u8], capacity: usize) -> Result<Vec<u8>, Error> {
        let (init_fn, init, run_fn, run) = match op {
            OnePart::Sign => (Function::SignInit, self.fl.C_SignInit, Function::Sign, self.fl.C_Sign),
            OnePart::Encrypt => (Function::EncryptInit, self.fl.C_EncryptInit, Function::Encrypt, self.fl.C_Encrypt),
            OnePart::Decrypt => (Function::DecryptInit, self.fl.C_DecryptInit, Function::Decrypt, self.fl.C_Decrypt),
        };
        let init = init.ok_or_else(|| unsupported(init_fn))?;
        let run = run.ok_or_else(|| unsupported(run_fn))?;
        // SAFETY: `mech` is a valid CK_MECHANISM whose parameter (if any) points into buffers the
        // caller keeps alive for the whole call; the module reads them during the Init.
        check(unsafe { init(session, mech, key) }, init_fn)?;
        // The input may be a data key in the clear (encrypting under the KEK): the copy is wiped
        // when dropped, and so is a first output buffer that proved too small.
        let mut input = zeroize::Zeroizing::new(input.to_vec());
        let mut out = vec![0u8; capacity.max(1)];
        for _ in 0..2 {
            let mut len = out.len() as CK_ULONG;
            // SAFETY: `input` is a buffer of the length given; `out` has room for `len` bytes; the
            // module writes at most `len` bytes and sets `len` to the size of the result.
            let rv = unsafe { run(session, input.as_mut_ptr(), input.len() as CK_ULONG, out.as_mut_ptr(), &mut len) };
            if rv == cryptoki_sys::CKR_BUFFER_TOO_SMALL && (len as usize) > out.len() {
                let small = std::mem::replace(&mut out, vec![0u8; len as usize]);
                drop(zeroize::Zeroizing::new(small));
                continue;
            }
            check(rv, run_fn)?;
            out.truncate(len as usize);
            return Ok(out);
        }
        Err(Error::Pkcs11(cryptoki::error::RvError::BufferTooSmall, run_fn))
    }

    /// C_DestroyObject on a handle this module returned.
    pub(crate) fn destroy_object(&self, session: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE) -> Result<(), Error> {
        let f = self.fl.C_DestroyObject.ok_or_else(|| unsupported(Function::DestroyObject))?;
        // SAFETY: plain values; the module checks the handles.
        check(unsafe { f(session, object) }, Function::DestroyObject)
    }
}

/// cryptoki's handle type for an object handle that a raw call returned.
pub(crate) fn object_handle(handle: CK_OBJECT_HANDLE) -> cryptoki::object::ObjectHandle {
    // SAFETY: `new_from_raw` is marked unsafe only because a made-up handle could name another
    // object; every caller passes a handle the module itself returned for this session, and the
    // module checks handles on every use.
    unsafe { cryptoki::object::ObjectHandle::new_from_raw(handle) }
}

/// A CKA_ALLOWED_MECHANISMS attribute pointing into `list`, which must outlive its use.
fn allowed_attribute(list: &mut [CK_MECHANISM_TYPE]) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: CKA_ALLOWED_MECHANISMS,
        pValue: list.as_mut_ptr() as *mut std::ffi::c_void,
        ulValueLen: std::mem::size_of_val(list) as CK_ULONG,
    }
}

impl Raw {
    /// C_CreateObject with `template` plus, if given, CKA_ALLOWED_MECHANISMS holding raw codes.
    pub(crate) fn create_object(&self, session: CK_SESSION_HANDLE, template: &[Attribute], allowed: Option<&[CK_MECHANISM_TYPE]>) -> Result<CK_OBJECT_HANDLE, Error> {
        let f = self.fl.C_CreateObject.ok_or_else(|| unsupported(Function::CreateObject))?;
        let mut allowed = allowed.map(<[CK_MECHANISM_TYPE]>::to_vec);
        let mut attrs: Vec<CK_ATTRIBUTE> = template.iter().map(CK_ATTRIBUTE::from).collect();
        if let Some(list) = allowed.as_mut() {
            attrs.push(allowed_attribute(list));
        }
        let mut handle: CK_OBJECT_HANDLE = 0;
        // SAFETY: the CK_ATTRIBUTEs point into `template` and `allowed`, both alive for the call;
        // the module writes one handle into `handle`.
        let rv = unsafe { f(session, attrs.as_mut_ptr(), attrs.len() as CK_ULONG, &mut handle) };
        check(rv, Function::CreateObject)?;
        Ok(handle)
    }

    /// C_UnwrapKey with a parameterless mechanism; the new object gets `template` plus, if
    /// given, CKA_ALLOWED_MECHANISMS holding raw codes.
    pub(crate) fn unwrap_key_allowed(
        &self,
        session: CK_SESSION_HANDLE,
        mechanism: CK_MECHANISM_TYPE,
        unwrapping_key: CK_OBJECT_HANDLE,
        wrapped: &[u8],
        template: &[Attribute],
        allowed: Option<&[CK_MECHANISM_TYPE]>,
    ) -> Result<CK_OBJECT_HANDLE, Error> {
        let f = self.fl.C_UnwrapKey.ok_or_else(|| unsupported(Function::UnwrapKey))?;
        let mut mech = CK_MECHANISM { mechanism, pParameter: std::ptr::null_mut(), ulParameterLen: 0 };
        let mut allowed = allowed.map(<[CK_MECHANISM_TYPE]>::to_vec);
        let mut attrs: Vec<CK_ATTRIBUTE> = template.iter().map(CK_ATTRIBUTE::from).collect();
        if let Some(list) = allowed.as_mut() {
            attrs.push(allowed_attribute(list));
        }
        let mut wrapped = wrapped.to_vec();
        let mut handle: CK_OBJECT_HANDLE = 0;
        // SAFETY: the CK_ATTRIBUTEs point into `template` and `allowed`, which outlive the call;
        // `wrapped` is a buffer of the length given; the module writes one handle into `handle`.
        let rv = unsafe {
            f(
                session,
                &mut mech,
                unwrapping_key,
                wrapped.as_mut_ptr() as *mut CK_BYTE,
                wrapped.len() as CK_ULONG,
                attrs.as_mut_ptr(),
                attrs.len() as CK_ULONG,
                &mut handle,
            )
        };
        check(rv, Function::UnwrapKey)?;
        Ok(handle)
    }
}
