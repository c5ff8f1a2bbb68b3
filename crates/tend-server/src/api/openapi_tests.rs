//! Tests of the OpenAPI document: it is OpenAPI 3.1, it describes exactly the routes the router
//! serves, and every reference in it resolves.

use std::collections::BTreeSet;

use serde_json::Value;

use super::*;

/// `(method, path)` of each `.route("…", get(…).post(…))` in Rust source.
fn routes_in(src: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (at, _) in src.match_indices(".route(\"") {
        let rest = &src[at + ".route(\"".len()..];
        let path = &rest[..rest.find('"').expect("a closed string")];
        // The arguments, up to the parenthesis that closes `.route(`.
        let mut depth = 1;
        let args = rest
            .char_indices()
            .find_map(|(i, c)| {
                depth += match c {
                    '(' => 1,
                    ')' => -1,
                    _ => 0,
                };
                (depth == 0).then(|| &rest[..i])
            })
            .expect("a closed call");
        for method in ["get", "post", "put", "delete", "patch"] {
            let called = args
                .match_indices(&format!("{method}("))
                .any(|(i, _)| i > 0 && !args[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_'));
            if called {
                out.insert((method.to_string(), path.to_string()));
            }
        }
    }
    out
}

/// Routes served but deliberately not in the document, with why (none so far).
const NOT_DOCUMENTED: &[(&str, &str)] = &[];

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            out.insert((method.clone(), path.clone()));
        }
    }
    out
}

#[test]
fn the_document_is_openapi_3_1() {
    let doc = document();
    for key in ["info", "paths", "components"] {
        assert!(doc[key].is_object(), "no {key}");
    }
    assert_eq!(doc["security"], serde_json::json!([{ "bearer": [] }]));
    // An OpenAPI 3.1 parser of its own reads it, and resolves what each operation refers to.
    let spec = oas3::from_json(serde_json::to_string(doc).unwrap()).expect("an OpenAPI 3.1 document");
    let version = spec.validate_version().expect("a supported version");
    assert_eq!((version.major, version.minor), (3, 1));
    let mut n = 0;
    for (path, method, op) in spec.operations() {
        let at = format!("{method} {path}");
        op.parameters(&spec).unwrap_or_else(|e| panic!("{at}: parameters: {e}"));
        op.request_body(&spec).unwrap_or_else(|e| panic!("{at}: request body: {e}"));
        let declared = op.responses.as_ref().map_or(0, |r| r.len());
        assert_eq!(op.responses(&spec).len(), declared, "{at}: a response does not resolve");
        n += 1;
    }
    assert_eq!(n, documented(doc).len());
    // Links name operations that exist.
    let ids: BTreeSet<&str> = spec.operations().filter_map(|(_, _, op)| op.operation_id.as_deref()).collect();
    let mut links = Vec::new();
    refs_named(doc, "operationId", &mut links);
    for id in links {
        assert!(ids.contains(id), "a link names operation `{id}`, which is not in the document");
    }
}

/// Every string under the key `key` in `v` (but an operation's own `operationId`).
fn refs_named<'a>(v: &'a Value, key: &str, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            if let (Some(Value::String(r)), None) = (m.get(key), m.get("responses")) {
                out.push(r);
            }
            m.values().for_each(|v| refs_named(v, key, out));
        }
        Value::Array(a) => a.iter().for_each(|v| refs_named(v, key, out)),
        _ => {}
    }
}

#[test]
fn every_route_is_documented_and_nothing_else() {
    let mut served = routes_in(include_str!("mod.rs"));
    // `/v1/health` and `/v1/cluster` as every member of a control plane answers them.
    served.extend(routes_in(include_str!("../ha/dispatch.rs")));
    assert!(served.len() > 40, "the route parser found only {served:?}");
    served.retain(|(m, p)| !NOT_DOCUMENTED.iter().any(|(r, _)| *r == format!("{m} {p}")));
    let doc = documented(document());
    let missing: Vec<_> = served.difference(&doc).collect();
    assert!(missing.is_empty(), "served but not in the document (add a #[utoipa::path]): {missing:?}");
    let extra: Vec<_> = doc.difference(&served).collect();
    assert!(extra.is_empty(), "in the document but not served: {extra:?}");
}

#[test]
fn every_reference_resolves() {
    let doc = document();
    let mut all = Vec::new();
    refs_named(doc, "$ref", &mut all);
    assert!(all.len() > 100, "only {} references", all.len());
    for r in all {
        let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("`{r}` is not in the document"));
        assert!(doc.pointer(pointer).is_some(), "`{r}` resolves to nothing");
    }
}

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

#[test]
fn every_operation_answers_and_errs_as_documented() {
    let doc = document();
    let public = ["/v1/health", "/v1/openapi.json", "/v1/agent/ca", "/v1/agent/join"];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(METHODS.contains(&method.as_str()), "{method} {path}");
            let at = format!("{method} {path}");
            assert!(op["tags"].as_array().is_some_and(|t| t.len() == 1), "{at}: one tag");
            assert!(op["summary"].is_string(), "{at}: a summary (the handler's doc comment)");
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.keys().any(|c| c.starts_with('2')), "{at}: a success");
            for (code, r) in responses.iter().filter(|(c, _)| !c.starts_with('2')) {
                assert!(
                    r["$ref"].as_str().is_some_and(|r| r.starts_with("#/components/responses/")),
                    "{at}: {code} is not one of the error answers"
                );
            }
            // Path parameters are declared, each once, and match the template.
            let params: Vec<&str> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter().filter(|p| p["in"] == "path").filter_map(|p| p["name"].as_str()).collect()
                })
                .unwrap_or_default();
            let template: Vec<&str> =
                path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')).collect();
            assert_eq!(params, template, "{at}: path parameters");
            // Public routes say so; the others need a token (the document's default) or, for
            // the agents' routes, a certificate or the cluster token.
            match op.get("security") {
                None => assert!(!public.contains(&path.as_str()), "{at} is public"),
                Some(s) if public.contains(&path.as_str()) => assert_eq!(s, &serde_json::json!([{}]), "{at}"),
                Some(s) => assert_eq!(
                    s,
                    &serde_json::json!([{ "clusterToken": [] }, { "agentCertificate": [] }]),
                    "{at}"
                ),
            }
            let guarded = !public.contains(&path.as_str()) && path != "/v1/cluster";
            for code in ["401", "403", "503"].into_iter().filter(|_| guarded) {
                assert!(responses.contains_key(code), "{at}: no {code}");
            }
        }
    }
    // Each error answer is an ErrorBody.
    for (name, r) in doc["components"]["responses"].as_object().unwrap() {
        let schema = &r["content"]["application/json"]["schema"];
        assert_eq!(schema["$ref"], "#/components/schemas/ErrorBody", "{name}");
    }
}

#[test]
fn schemas_follow_serde() {
    let doc = document();
    let schema = |name: &str| doc["components"]["schemas"][name].clone();
    // `#[serde(default)]` and `Option` fields are not required; the rest are.
    let req = schema("ServiceRequest");
    assert_eq!(req["required"], serde_json::json!(["spec"]));
    assert_eq!(req["properties"]["expected_generation"]["type"], serde_json::json!(["integer", "null"]));
    // Enums are their serde words.
    assert_eq!(schema("EventKind")["enum"][10], "control-plane");
    assert_eq!(schema("RolloutState")["enum"], serde_json::json!(["in_progress", "complete", "failed"]));
    // Maps are objects of their values; any JSON value is any JSON value.
    let ports = &schema("Endpoint")["properties"]["ports"];
    assert_eq!(ports["type"], "object");
    assert_eq!(ports["additionalProperties"]["maximum"], 65535);
    assert!(schema("FieldChange")["properties"]["old"].as_object().is_some_and(|o| o.get("type").is_none()));
    // A flattened struct is all of its parts.
    assert!(schema("TokenCreated")["allOf"].is_array());
    // Integers carry their type's bounds; stated ones win.
    assert_eq!(schema("TaskStatus")["properties"]["pid"]["maximum"], u32::MAX);
    assert_eq!(schema("JobRunInfo")["properties"]["token"]["minimum"], i64::MIN);
    assert_eq!(schema("TaskStatus")["properties"]["pid"]["format"], serde_json::json!("uint32"));
    assert_eq!(schema("JoinTokenRequest")["properties"]["ttl_seconds"]["maximum"], 604800);
    let ports = &schema("AgentResources")["properties"]["port_range"];
    assert_eq!(
        (&ports["minItems"], &ports["maxItems"], &ports["items"]["minimum"]),
        (&2.into(), &2.into(), &1.into())
    );
    // Query parameters have their types and bounds.
    let events = &doc["paths"]["/v1/events"]["get"]["parameters"];
    let limit = events.as_array().unwrap().iter().find(|p| p["name"] == "limit").unwrap();
    assert_eq!(limit["schema"]["maximum"], u64::MAX);
    let logs = &doc["paths"]["/v1/services/{name}/pods/{instance}/tasks/{task}/logs"]["get"]["parameters"];
    let stream = logs.as_array().unwrap().iter().find(|p| p["name"] == "stream").unwrap();
    assert!(stream.to_string().contains(r#"["stdout","stderr"]"#), "{stream}");
    // Each event of the stream: its `data` is an EventInfo.
    let event = schema("SseEvent");
    assert_eq!(event["properties"]["data"]["contentSchema"]["$ref"], "#/components/schemas/EventInfo");
    assert_eq!(event["properties"]["event"]["$ref"], "#/components/schemas/EventKind");
}

#[test]
fn the_action_words_are_the_handlers() {
    for (word, kind) in
        [("interrupt", "Interrupt"), ("continue", "Continue"), ("force-complete", "ForceComplete")]
    {
        let k: Option<tend_api::PlanActionKind> = tend_api::action_word(word);
        assert_eq!(format!("{k:?}"), format!("Some({kind})"));
    }
    assert_eq!(
        tend_api::action_word::<tend_api::PodActionKind>("replace"),
        Some(tend_api::PodActionKind::Replace)
    );
    assert_eq!(tend_api::action_word::<tend_api::PodActionKind>("Replace"), None);
}
