//! `fashion export --triton` writes a well-formed Triton model repository: its `config.pbtxt`,
//! read by a protobuf text-format reader written here, names the ONNX file's input and outputs
//! with the ONNX file's shapes, and every label file has one line per output value.

use std::collections::BTreeMap;
use std::process::Command;

use protobuf::Message;

/// A protobuf text-format value: a scalar (kept as written) or a message.
#[derive(Debug, Clone)]
enum Value {
    Scalar(String),
    Message(Fields),
}

/// Field name -> every value it was given (repeated fields and lists flattened).
type Fields = BTreeMap<String, Vec<Value>>;

fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '#' {
            while chars.next().is_some_and(|c| c != '\n') {}
        } else if "{}[]:,".contains(c) {
            out.push(c.to_string());
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut s = String::from("\"");
            for c in chars.by_ref() {
                if c == '"' {
                    break;
                }
                s.push(c);
            }
            out.push(s);
        } else {
            let mut s = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || "{}[]:,#\"".contains(c) {
                    break;
                }
                s.push(c);
                chars.next();
            }
            out.push(s);
        }
    }
    out
}

fn parse_value(t: &[String], i: &mut usize) -> Vec<Value> {
    match t[*i].as_str() {
        "{" => {
            *i += 1;
            let m = parse_fields(t, i);
            assert_eq!(t[*i], "}", "unclosed message");
            *i += 1;
            vec![Value::Message(m)]
        }
        "[" => {
            *i += 1;
            let mut out = Vec::new();
            while t[*i] != "]" {
                out.extend(parse_value(t, i));
                if t[*i] == "," {
                    *i += 1;
                }
            }
            *i += 1;
            out
        }
        s => {
            *i += 1;
            vec![Value::Scalar(s.trim_start_matches('"').to_string())]
        }
    }
}

fn parse_fields(t: &[String], i: &mut usize) -> Fields {
    let mut fields = Fields::new();
    while *i < t.len() && t[*i] != "}" {
        let name = t[*i].clone();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad field name {name:?}"
        );
        *i += 1;
        if t[*i] == ":" {
            *i += 1;
        }
        let v = parse_value(t, i);
        fields.entry(name).or_default().extend(v);
        if *i < t.len() && t[*i] == "," {
            *i += 1;
        }
    }
    fields
}

fn scalar<'a>(m: &'a Fields, k: &str) -> &'a str {
    match m.get(k).and_then(|v| v.first()) {
        Some(Value::Scalar(s)) => s,
        other => panic!("{k}: expected one scalar, found {other:?}"),
    }
}

fn messages<'a>(m: &'a Fields, k: &str) -> Vec<&'a Fields> {
    m.get(k)
        .unwrap_or_else(|| panic!("no {k}"))
        .iter()
        .map(|v| match v {
            Value::Message(f) => f,
            Value::Scalar(s) => panic!("{k}: expected a message, found {s}"),
        })
        .collect()
}

fn dims(m: &Fields) -> Vec<i64> {
    m["dims"]
        .iter()
        .map(|v| match v {
            Value::Scalar(s) => s.parse().unwrap(),
            Value::Message(_) => panic!("dims must be numbers"),
        })
        .collect()
}

/// An ONNX value's shape: a number per dimension, -1 for a symbolic one.
fn onnx_shape(v: &onnx_protobuf::ValueInfoProto) -> Vec<i64> {
    use onnx_protobuf::tensor_shape_proto::dimension::Value as D;
    let t = v.type_.tensor_type();
    assert_eq!(t.elem_type, 1, "{}: float32", v.name);
    t.shape
        .dim
        .iter()
        .map(|d| match &d.value {
            Some(D::DimValue(n)) => *n,
            _ => -1,
        })
        .collect()
}

#[test]
fn triton_repository_matches_the_onnx_file() {
    let repo = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fashion"))
        .args(["export", "--triton"])
        .arg(repo.path())
        .args(["--max-batch", "48"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = repo.path().join("fashion");
    let text = std::fs::read_to_string(dir.join("config.pbtxt")).unwrap();
    let t = tokens(&text);
    let mut i = 0;
    let config = parse_fields(&t, &mut i);
    assert_eq!(i, t.len(), "config.pbtxt parsed to its end");
    assert_eq!(scalar(&config, "name"), "fashion", "name = folder name");
    assert_eq!(scalar(&config, "platform"), "onnxruntime_onnx");
    assert_eq!(scalar(&config, "max_batch_size"), "48");
    assert!(config.contains_key("dynamic_batching"));

    let bytes = std::fs::read(dir.join("1/model.onnx")).unwrap();
    let model = onnx_protobuf::ModelProto::parse_from_bytes(&bytes).unwrap();
    let g = &model.graph;
    // Initializers may be listed as inputs in old files; the real input is the one without one.
    let inits: Vec<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let onnx_inputs: Vec<_> = g
        .input
        .iter()
        .filter(|v| !inits.contains(&v.name.as_str()))
        .collect();

    let inputs = messages(&config, "input");
    assert_eq!(inputs.len(), onnx_inputs.len());
    for (c, o) in inputs.iter().zip(&onnx_inputs) {
        assert_eq!(scalar(c, "name"), o.name);
        assert_eq!(scalar(c, "data_type"), "TYPE_FP32");
        let shape = onnx_shape(o);
        assert_eq!(shape[0], -1, "a batch dimension Triton can fill");
        assert_eq!(dims(c), shape[1..], "input {} dims", o.name);
    }

    // Every head of the model (its metadata) is served; other outputs (feature maps) need not be.
    let meta = model
        .metadata_props
        .iter()
        .find(|p| p.key == "fashion")
        .expect("fashion metadata");
    let meta: serde_json::Value = serde_json::from_str(&meta.value).unwrap();
    let heads: Vec<&str> = meta["heads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    let outputs = messages(&config, "output");
    let names: Vec<&str> = outputs.iter().map(|c| scalar(c, "name")).collect();
    assert_eq!(names, heads, "one output per head");
    for c in outputs {
        let name = scalar(c, "name");
        let o = g
            .output
            .iter()
            .find(|o| o.name == name)
            .unwrap_or_else(|| panic!("config output {name} is not in the ONNX file"));
        assert_eq!(scalar(c, "data_type"), "TYPE_FP32");
        let shape = onnx_shape(o);
        assert_eq!(shape[0], -1, "{name}: batch dimension");
        assert_eq!(dims(c), shape[1..], "output {name} dims");
        let labels = std::fs::read_to_string(dir.join(scalar(c, "label_filename"))).unwrap();
        assert_eq!(
            labels.lines().count() as i64,
            shape[1],
            "{name}: one label per value"
        );
        assert!(labels.lines().all(|l| !l.trim().is_empty()));
    }

    // Exporting again into the same repository must not overwrite the model.
    let again = Command::new(env!("CARGO_BIN_EXE_fashion"))
        .args(["export", "--triton"])
        .arg(repo.path())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}
