//! The search parameters medgate supports, per resource type: name, FHIR type, where in the
//! resource the values are, and the SearchParameter that defines them. The CapabilityStatement
//! is generated from these tables, so it lists exactly what a search accepts.
//!
//! Boundary: static tables. No I/O.

/// The FHIR type of a search parameter (R4 search.html), which decides how values compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    Token,
    Date,
    String,
    Reference,
}

impl ParamType {
    /// The code of the type in a CapabilityStatement (`search-param-type`).
    pub fn code(self) -> &'static str {
        match self {
            ParamType::Token => "token",
            ParamType::Date => "date",
            ParamType::String => "string",
            ParamType::Reference => "reference",
        }
    }
}

/// Where a parameter's values are in a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Dotted element paths from the resource root, arrays flattened on the way
    /// (`content.attachment.creation`); several paths are a union.
    Elements(&'static [&'static str]),
    /// A chained parameter through a reference to a resource contained in this one
    /// (`author.given`: `author` → `#id` in `contained` → `name.given`).
    Chained { reference: &'static str, target: &'static str },
    /// The value of an extension of the resource (`extension(url).valueX`).
    Extension { url: &'static str, value: &'static str },
    /// The patient: the gateway finds a patient's resources through the pseudonym of the
    /// identifier given, so every candidate already matches.
    Patient,
}

/// One supported search parameter.
#[derive(Debug, Clone, Copy)]
pub struct ParamDef {
    pub name: &'static str,
    pub ty: ParamType,
    pub path: Path,
    /// Canonical URL of the SearchParameter that defines it (empty for a chain).
    pub definition: &'static str,
    pub documentation: &'static str,
    /// The code system a plain `code` element belongs to (`status`), so `system|code` works.
    pub code_system: Option<&'static str>,
}

/// A sort order a search accepts in `_sort` (ascending; `-name` descends).
#[derive(Debug, Clone, Copy)]
pub struct SortDef {
    pub name: &'static str,
    /// Element path of a date-like value.
    pub path: &'static str,
}

/// Everything a resource type's searches accept.
#[derive(Debug)]
pub struct ResourceSearch {
    pub resource_type: &'static str,
    pub params: &'static [ParamDef],
    pub sorts: &'static [SortDef],
    /// The order without `_sort`: (sort, descending).
    pub default_sort: (SortDef, bool),
}

macro_rules! hl7 {
    ($name:literal) => {
        concat!("http://hl7.org/fhir/SearchParameter/", $name)
    };
}

const fn p(name: &'static str, ty: ParamType, path: Path, definition: &'static str, documentation: &'static str) -> ParamDef {
    ParamDef { name, ty, path, definition, documentation, code_system: None }
}

const PATIENT_DOC: &str = "the patient, by identifier: patient.identifier=system|value (also patient:identifier=, and patient=system|value); one patient per search. The gateway finds the patient's records through an HSM-keyed pseudonym of the identifier";

const ID: ParamDef = p("_id", ParamType::Token, Path::Elements(&["id"]), hl7!("Resource-id"), "the resource id");
const LAST_UPDATED: ParamDef =
    p("_lastUpdated", ParamType::Date, Path::Elements(&["meta.lastUpdated"]), hl7!("Resource-lastUpdated"), "when the gateway stored the resource or last changed it");
const LAST_UPDATED_IG: ParamDef = p(
    "_lastupdated",
    ParamType::Date,
    Path::Elements(&["meta.lastUpdated"]),
    hl7!("Resource-lastUpdated"),
    "_lastUpdated as the MHD Document Responder CapabilityStatement spells it",
);
const PATIENT: ParamDef = p("patient", ParamType::Reference, Path::Patient, hl7!("clinical-patient"), PATIENT_DOC);
const PATIENT_IDENTIFIER: ParamDef = p("patient.identifier", ParamType::Token, Path::Patient, "", PATIENT_DOC);

/// ITI-67: DocumentReference.
pub static DOCUMENT_REFERENCE: ResourceSearch = ResourceSearch {
    resource_type: "DocumentReference",
    params: &[
        PATIENT,
        PATIENT_IDENTIFIER,
        ID,
        LAST_UPDATED,
        LAST_UPDATED_IG,
        ParamDef {
            code_system: Some("http://hl7.org/fhir/document-reference-status"),
            ..p("status", ParamType::Token, Path::Elements(&["status"]), hl7!("DocumentReference-status"), "current | superseded | entered-in-error; a comma means OR")
        },
        p(
            "creation",
            ParamType::Date,
            Path::Elements(&["content.attachment.creation"]),
            "https://profiles.ihe.net/ITI/MHD/SearchParameter/DocumentReference-Creation",
            "content.attachment.creation, with the prefixes eq ne gt lt ge le sa eb ap",
        ),
        p("date", ParamType::Date, Path::Elements(&["date"]), hl7!("DocumentReference-date"), "DocumentReference.date, with the prefixes eq ne gt lt ge le sa eb ap"),
        p(
            "author.given",
            ParamType::String,
            Path::Chained { reference: "author", target: "name.given" },
            "",
            "given name of an author contained in the DocumentReference (starts with, ignoring case and accents; :exact, :contains)",
        ),
        p(
            "author.family",
            ParamType::String,
            Path::Chained { reference: "author", target: "name.family" },
            "",
            "family name of an author contained in the DocumentReference (starts with, ignoring case and accents; :exact, :contains)",
        ),
        p("category", ParamType::Token, Path::Elements(&["category"]), hl7!("DocumentReference-category"), "classCode"),
        p("type", ParamType::Token, Path::Elements(&["type"]), hl7!("clinical-type"), "typeCode"),
        p("setting", ParamType::Token, Path::Elements(&["context.practiceSetting"]), hl7!("DocumentReference-setting"), "practiceSettingCode"),
        p("period", ParamType::Date, Path::Elements(&["context.period"]), hl7!("DocumentReference-period"), "serviceStartTime / serviceStopTime; an open end reaches forever"),
        p("facility", ParamType::Token, Path::Elements(&["context.facilityType"]), hl7!("DocumentReference-facility"), "healthcareFacilityTypeCode"),
        p("event", ParamType::Token, Path::Elements(&["context.event"]), hl7!("DocumentReference-event"), "eventCodeList"),
        p("security-label", ParamType::Token, Path::Elements(&["securityLabel"]), hl7!("DocumentReference-security-label"), "confidentialityCode"),
        p("format", ParamType::Token, Path::Elements(&["content.format"]), hl7!("DocumentReference-format"), "formatCode"),
        p(
            "related",
            ParamType::Reference,
            Path::Elements(&["context.related"]),
            hl7!("DocumentReference-related"),
            "referenceIdList: Type/id, id or an absolute URL; related:identifier=system|value matches the reference's identifier",
        ),
        p("identifier", ParamType::Token, Path::Elements(&["masterIdentifier", "identifier"]), hl7!("clinical-identifier"), "uniqueId (masterIdentifier) or entryUUID (identifier), system|value"),
    ],
    sorts: &[SortDef { name: "date", path: "date" }, SortDef { name: "_lastUpdated", path: "meta.lastUpdated" }],
    default_sort: (SortDef { name: "date", path: "date" }, true),
};

/// ITI-66: List (SubmissionSet and Folder).
pub static LIST: ResourceSearch = ResourceSearch {
    resource_type: "List",
    params: &[
        PATIENT,
        PATIENT_IDENTIFIER,
        ID,
        LAST_UPDATED,
        LAST_UPDATED_IG,
        p(
            "code",
            ParamType::Token,
            Path::Elements(&["code"]),
            hl7!("clinical-code"),
            "submissionset or folder (https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes)",
        ),
        ParamDef {
            code_system: Some("http://hl7.org/fhir/list-status"),
            ..p("status", ParamType::Token, Path::Elements(&["status"]), hl7!("List-status"), "current | retired | entered-in-error; a comma means OR")
        },
        p("date", ParamType::Date, Path::Elements(&["date"]), hl7!("clinical-date"), "submissionTime (or a folder's last update), with the prefixes eq ne gt lt ge le sa eb ap"),
        p("identifier", ParamType::Token, Path::Elements(&["identifier"]), hl7!("clinical-identifier"), "uniqueId or entryUUID, system|value"),
        p(
            "designationType",
            ParamType::Token,
            Path::Extension { url: "https://profiles.ihe.net/ITI/MHD/StructureDefinition/ihe-designationType", value: "valueCodeableConcept" },
            "https://profiles.ihe.net/ITI/MHD/SearchParameter/List-DesignationType",
            "contentTypeCode (extension ihe-designationType)",
        ),
        p(
            "sourceId",
            ParamType::Token,
            Path::Extension { url: "https://profiles.ihe.net/ITI/MHD/StructureDefinition/ihe-sourceId", value: "valueIdentifier" },
            "https://profiles.ihe.net/ITI/MHD/SearchParameter/List-SourceId",
            "sourceId of the SubmissionSet (extension ihe-sourceId), system|value or value",
        ),
        p(
            "source-identifier",
            ParamType::Token,
            Path::Extension { url: "https://profiles.ihe.net/ITI/MHD/StructureDefinition/ihe-sourceId", value: "valueIdentifier" },
            "https://profiles.ihe.net/ITI/MHD/SearchParameter/List-SourceId",
            "another name of sourceId",
        ),
        p(
            "source.given",
            ParamType::String,
            Path::Chained { reference: "source", target: "name.given" },
            "",
            "given name of the author contained in the List (starts with, ignoring case and accents; :exact, :contains)",
        ),
        p(
            "source.family",
            ParamType::String,
            Path::Chained { reference: "source", target: "name.family" },
            "",
            "family name of the author contained in the List (starts with, ignoring case and accents; :exact, :contains)",
        ),
    ],
    sorts: &[SortDef { name: "date", path: "date" }, SortDef { name: "_lastUpdated", path: "meta.lastUpdated" }],
    default_sort: (SortDef { name: "date", path: "date" }, true),
};

/// A patient's audit trail (IHE BALP AuditEvents from the ledger).
pub static AUDIT_EVENT: ResourceSearch = ResourceSearch {
    resource_type: "AuditEvent",
    params: &[PATIENT, PATIENT_IDENTIFIER],
    sorts: &[SortDef { name: "date", path: "recorded" }],
    default_sort: (SortDef { name: "date", path: "recorded" }, false),
};

/// A patient's consents.
pub static CONSENT: ResourceSearch = ResourceSearch {
    resource_type: "Consent",
    params: &[PATIENT, PATIENT_IDENTIFIER],
    sorts: &[SortDef { name: "date", path: "dateTime" }],
    default_sort: (SortDef { name: "date", path: "dateTime" }, false),
};

impl ResourceSearch {
    /// The definition of parameter `name`, if supported.
    pub fn param(&self, name: &str) -> Option<&'static ParamDef> {
        self.params.iter().find(|p| p.name == name)
    }

    pub(crate) fn sort(&self, name: &str) -> Option<SortDef> {
        self.sorts.iter().copied().find(|s| s.name == name)
    }
}
