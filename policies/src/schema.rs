//! The JSON Schema of the policy language, for editors (yaml-language-server)
//! and CI linters. Checked in at `policies/schema/segmentation-policy.schema.json`;
//! a test keeps the file, this function and the parser's field lists in sync.

use serde_json::{json, Value};

use crate::model::{API_VERSION, KIND};

/// The schema as JSON (draft-07, the draft editors support best).
pub fn json_schema() -> Value {
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": "https://palisade.dev/schemas/segmentation-policy.schema.json",
        "title": "Palisade SegmentationPolicy",
        "description": "An allow-list of the traffic into (ingress) and out of (egress) the workloads it targets. See policies/README.md.",
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": false,
        "properties": {
            "apiVersion": {"const": API_VERSION},
            "kind": {"const": KIND},
            "metadata": {
                "type": "object",
                "required": ["name", "namespace"],
                "additionalProperties": false,
                "properties": {
                    "name": {"$ref": "#/definitions/objectName"},
                    "namespace": {"$ref": "#/definitions/objectName"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "annotations": {"type": "object", "additionalProperties": {"type": "string"}}
                }
            },
            "spec": {
                "type": "object",
                "required": ["targets"],
                "additionalProperties": false,
                "properties": {
                    "targets": {
                        "description": "The workloads this policy selects. A workload selected in a direction is default-deny in that direction.",
                        "type": "array",
                        "minItems": 1,
                        "items": {"$ref": "#/definitions/target"}
                    },
                    "mode": {
                        "description": "enforce blocks; audit never blocks and reports what it would block.",
                        "enum": ["enforce", "audit"],
                        "default": "enforce"
                    },
                    "ingress": {
                        "description": "Rules for traffic into the targets. Present (even empty) = selected for ingress.",
                        "type": ["array", "null"],
                        "items": {"$ref": "#/definitions/ingressRule"}
                    },
                    "egress": {
                        "description": "Rules for traffic out of the targets. Present (even empty) = selected for egress.",
                        "type": ["array", "null"],
                        "items": {"$ref": "#/definitions/egressRule"}
                    },
                    "baseline": {
                        "description": "The learned-baseline mode of the targets' sidecars, over their baseline.mode setting.",
                        "type": "object",
                        "required": ["mode"],
                        "additionalProperties": false,
                        "properties": {
                            "mode": {"enum": ["off", "learn", "monitor", "protect"]}
                        }
                    }
                }
            }
        },
        "definitions": {
            "objectName": {
                "type": "string",
                "pattern": "^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$",
                "maxLength": 253
            },
            "identity": {
                "description": "A SPIFFE ID, or a glob ending in /* (every ID below that path).",
                "type": "string",
                "pattern": "^spiffe://[a-z0-9._-]+(/[A-Za-z0-9._-]+)*(/\\*)?$",
                "maxLength": 2048
            },
            "namespace": {
                "description": "Every identity spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.",
                "type": "string",
                "pattern": "^[A-Za-z0-9._-]+$"
            },
            "target": {
                "type": "object",
                "additionalProperties": false,
                "minProperties": 1,
                "maxProperties": 1,
                "properties": {
                    "identity": {"$ref": "#/definitions/identity"},
                    "namespace": {"$ref": "#/definitions/namespace"}
                }
            },
            "peer": {
                "type": "object",
                "additionalProperties": false,
                "minProperties": 1,
                "maxProperties": 1,
                "properties": {
                    "identity": {"$ref": "#/definitions/identity"},
                    "namespace": {
                        "$ref": "#/definitions/namespace",
                        "description": "Identities in this namespace of the local workload's trust domain."
                    },
                    "cidr": {
                        "description": "Peers known only by address (plaintext sources, destinations outside the mesh), e.g. 10.1.0.0/16.",
                        "type": "string"
                    }
                }
            },
            "peers": {"type": "array", "minItems": 1, "items": {"$ref": "#/definitions/peer"}},
            "port": {
                "oneOf": [
                    {"type": "integer", "minimum": 1, "maximum": 65535},
                    {"type": "string", "pattern": "^[0-9]{1,5}(-[0-9]{1,5})?$"}
                ]
            },
            "ports": {
                "description": "Ports or \"lo-hi\" ranges; omitted = every port.",
                "type": "array",
                "minItems": 1,
                "items": {"$ref": "#/definitions/port"}
            },
            "http": {
                "description": "L7 conditions, OR-ed; inside one entry, fields are AND-ed; an omitted field matches anything.",
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "minProperties": 1,
                    "properties": {
                        "methods": {"type": "array", "minItems": 1, "items": {"type": "string", "pattern": "^[A-Z]+$"}},
                        "paths": {
                            "description": "Exact paths, or prefixes ending in /*; a {name} segment matches exactly one segment.",
                            "type": "array",
                            "minItems": 1,
                            "items": {"type": "string", "pattern": "^(/\\*|(/([^/*?#{}]*|\\{[A-Za-z0-9_]+\\}))+(/\\*)?)$"}
                        },
                        "hosts": {
                            "description": "Hosts, optionally *.-prefixed; the port is ignored.",
                            "type": "array",
                            "minItems": 1,
                            "items": {"type": "string", "pattern": "^(\\*\\.)?[A-Za-z0-9.-]+$"}
                        }
                    }
                }
            },
            "ruleName": {"type": "string", "pattern": "^[A-Za-z0-9._-]+$"},
            "action": {"enum": ["allow", "deny"]},
            "ingressRule": rule("from", "Sources, OR-ed; omitted = any source."),
            "egressRule": rule("to", "Destinations, OR-ed; omitted = any destination.")
        }
    })
}

/// An ingress or egress rule, whose peers are under `peers_key`.
fn rule(peers_key: &str, peers_description: &str) -> Value {
    json!({
        "type": "object",
        "required": ["name", "action"],
        "additionalProperties": false,
        "properties": {
            "name": {"$ref": "#/definitions/ruleName"},
            "action": {"$ref": "#/definitions/action"},
            peers_key: {"$ref": "#/definitions/peers", "description": peers_description},
            "ports": {"$ref": "#/definitions/ports"},
            "http": {"$ref": "#/definitions/http"}
        }
    })
}

/// The schema file's exact contents.
pub fn json_schema_text() -> String {
    let mut s = serde_json::to_string_pretty(&json_schema()).expect("a JSON value serializes");
    s.push('\n');
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::parse::fields as parser;

    /// The property names of a schema node, sorted.
    pub(crate) fn keys(v: &Value) -> Vec<String> {
        let mut k: Vec<String> = v["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        k.sort();
        k
    }

    pub(crate) fn sorted(list: &[&str]) -> Vec<String> {
        let mut k: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        k.sort();
        k
    }

    #[test]
    fn schema_names_exactly_the_fields_the_parser_accepts() {
        let s = json_schema();
        let d = &s["definitions"];
        assert_eq!(keys(&s), sorted(parser::DOC));
        assert_eq!(keys(&s["properties"]["metadata"]), sorted(parser::METADATA));
        assert_eq!(keys(&s["properties"]["spec"]), sorted(parser::SPEC));
        assert_eq!(keys(&d["target"]), sorted(parser::TARGET));
        assert_eq!(keys(&d["peer"]), sorted(crate::values::PEER_FIELDS));
        assert_eq!(
            keys(&d["http"]["items"]),
            sorted(crate::values::HTTP_FIELDS)
        );
        let mut rule = keys(&d["ingressRule"]);
        rule.extend(keys(&d["egressRule"]));
        rule.sort();
        rule.dedup();
        assert_eq!(rule, sorted(parser::RULE));
    }

    #[test]
    fn checked_in_schema_file_is_current() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/schema/segmentation-policy.schema.json"
        );
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == json_schema_text(),
            "{path} is stale: regenerate it with `palisadectl policy schema > policies/schema/segmentation-policy.schema.json`"
        );
    }
}
