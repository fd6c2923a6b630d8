//! Editing ONNX graphs: add the pooling and classification heads to the backbone, choose the
//! outputs, drop what they no longer need, and store metadata. Built on the `onnx-protobuf`
//! messages; serialising and parsing is protobuf's job.

use std::collections::HashSet;
use std::path::Path;

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::type_proto;
use onnx_protobuf::{
    AttributeProto, Message, ModelProto, NodeProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

use crate::error::{Error, Result};

/// An ONNX model being edited.
pub struct Graph {
    model: ModelProto,
}

/// An attribute value for [`Graph::node`].
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Str(String),
}

impl Graph {
    /// Parses ONNX bytes; `name` only names them in errors.
    pub fn from_bytes(bytes: &[u8], name: &Path) -> Result<Graph> {
        let model = ModelProto::parse_from_bytes(bytes)
            .map_err(|e| Error::bad_model(name, format!("not an ONNX model: {e}")))?;
        if model.graph.is_none() {
            return Err(Error::bad_model(name, "the ONNX file has no graph"));
        }
        Ok(Graph { model })
    }

    /// Serialises the model.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.model
            .write_to_bytes()
            .map_err(|e| Error::Engine(format!("cannot serialise ONNX: {e}")))
    }

    /// The names of the graph's outputs.
    pub fn output_names(&self) -> Vec<String> {
        self.model
            .graph
            .output
            .iter()
            .map(|o| o.name.clone())
            .collect()
    }

    /// The version of the standard ONNX operator set the model imports.
    pub fn opset(&self) -> Option<i64> {
        self.model
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
    }

    /// The names of the graph's inputs that are not initializers.
    pub fn input_names(&self) -> Vec<String> {
        let Some(g) = self.model.graph.as_ref() else {
            return Vec::new();
        };
        g.input
            .iter()
            .filter(|i| !g.initializer.iter().any(|t| t.name == i.name))
            .map(|i| i.name.clone())
            .collect()
    }

    /// The operator type and inputs of the node that produces `output`.
    pub fn producer(&self, output: &str) -> Option<(&str, Vec<&str>)> {
        let graph = self.model.graph.as_ref()?;
        graph
            .node
            .iter()
            .find(|n| n.output.iter().any(|o| o == output))
            .map(|n| {
                (
                    n.op_type.as_str(),
                    n.input.iter().map(|s| s.as_str()).collect(),
                )
            })
    }

    /// An integer (or integer list) attribute of the node that produces `output`.
    pub fn producer_ints(&self, output: &str, attr: &str) -> Option<Vec<i64>> {
        let graph = self.model.graph.as_ref()?;
        let node = graph
            .node
            .iter()
            .find(|n| n.output.iter().any(|o| o == output))?;
        let a = node.attribute.iter().find(|a| a.name == attr)?;
        if a.type_ == AttributeType::INT.into() {
            Some(vec![a.i])
        } else {
            Some(a.ints.clone())
        }
    }

    /// A float initializer's shape and values (float32, or float16 widened to float32).
    pub fn initializer_f32(&self, name: &str) -> Option<(Vec<usize>, Vec<f32>)> {
        let t = self
            .model
            .graph
            .initializer
            .iter()
            .find(|t| t.name == name)?;
        let dims = t.dims.iter().map(|&d| d as usize).collect();
        let data = if t.data_type == DataType::FLOAT as i32 {
            if t.raw_data.is_empty() {
                t.float_data.clone()
            } else {
                t.raw_data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()
            }
        } else if t.data_type == DataType::FLOAT16 as i32 && !t.raw_data.is_empty() {
            t.raw_data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect()
        } else {
            return None;
        };
        Some((dims, data))
    }

    /// Adds a float16 initializer named `name` and a `Cast` to float32 named `output`: half
    /// the bytes for large weights whose float16 rounding does not matter.
    pub fn initializer_f16(&mut self, name: &str, output: &str, dims: &[usize], data: &[f32]) {
        let t = float_tensor(name, dims, data, true);
        self.model.graph.mut_or_insert_default().initializer.push(t);
        self.node(
            "Cast",
            &[name],
            output,
            vec![("to", Attr::Int(DataType::FLOAT as i64))],
        );
    }

    /// Adds a float32 initializer of the given shape.
    pub fn initializer(&mut self, name: &str, dims: &[usize], data: Vec<f32>) {
        let t = float_tensor(name, dims, &data, false);
        self.model.graph.mut_or_insert_default().initializer.push(t);
    }

    /// Replaces the values of float initializer `name` (stored as float16 when `as_f16` is set,
    /// as [`Graph::initializer_f16`] stores it), keeping its place in the graph. Fails when the
    /// graph has no such initializer or it has another shape.
    pub fn replace_initializer(
        &mut self,
        name: &str,
        dims: &[usize],
        data: &[f32],
        as_f16: bool,
    ) -> std::result::Result<(), String> {
        let t = float_tensor(name, dims, data, as_f16);
        let graph = self.graph_mut();
        let old = graph
            .initializer
            .iter_mut()
            .find(|i| i.name == name)
            .ok_or_else(|| format!("no initializer {name:?}"))?;
        if old.dims != t.dims || old.data_type != t.data_type {
            return Err(format!(
                "initializer {name:?} has shape {:?}, the new values {:?}",
                old.dims, t.dims
            ));
        }
        *old = t;
        Ok(())
    }

    /// Adds a 1-D int64 initializer (shapes, slice bounds).
    pub fn initializer_i64(&mut self, name: &str, data: &[i64]) {
        let t = TensorProto {
            name: name.to_string(),
            dims: vec![data.len() as i64],
            data_type: DataType::INT64 as i32,
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        };
        self.model.graph.mut_or_insert_default().initializer.push(t);
    }

    /// Adds a node, named after its output.
    pub fn node(&mut self, op: &str, inputs: &[&str], output: &str, attrs: Vec<(&str, Attr)>) {
        let n = self.graph_mut().node.len();
        self.insert_node(n, output, op, inputs, output, attrs);
    }

    /// Inserts a node named `name` at position `index` of the node list (nodes must stay in
    /// topological order: a node comes after the producers of its inputs).
    pub fn insert_node(
        &mut self,
        index: usize,
        name: &str,
        op: &str,
        inputs: &[&str],
        output: &str,
        attrs: Vec<(&str, Attr)>,
    ) {
        let attribute = attrs
            .into_iter()
            .map(|(name, a)| {
                let mut p = AttributeProto {
                    name: name.to_string(),
                    ..Default::default()
                };
                match a {
                    Attr::Int(i) => {
                        p.type_ = AttributeType::INT.into();
                        p.i = i;
                    }
                    Attr::Ints(v) => {
                        p.type_ = AttributeType::INTS.into();
                        p.ints = v;
                    }
                    Attr::Float(f) => {
                        p.type_ = AttributeType::FLOAT.into();
                        p.f = f;
                    }
                    Attr::Str(v) => {
                        p.type_ = AttributeType::STRING.into();
                        p.s = v.into_bytes();
                    }
                }
                p
            })
            .collect();
        self.graph_mut().node.insert(
            index,
            NodeProto {
                op_type: op.to_string(),
                name: name.to_string(),
                input: inputs.iter().map(|s| s.to_string()).collect(),
                output: vec![output.to_string()],
                attribute,
                ..Default::default()
            },
        );
    }

    /// Moves the last `count` nodes, in their order, in front of all the others.
    pub fn move_last_to_front(&mut self, count: usize) {
        let nodes = &mut self.graph_mut().node;
        let count = count.min(nodes.len());
        nodes.rotate_right(count);
    }

    /// Sets the last two dimensions (height and width) of graph input `name` to `side`.
    pub fn set_input_side(&mut self, name: &str, side: u32) {
        let graph = self.graph_mut();
        let Some(input) = graph.input.iter_mut().find(|i| i.name == name) else {
            return;
        };
        let Some(type_proto::Value::TensorType(t)) =
            input.type_.as_mut().and_then(|t| t.value.as_mut())
        else {
            return;
        };
        let Some(shape) = t.shape.as_mut() else {
            return;
        };
        let n = shape.dim.len();
        for d in shape.dim.iter_mut().skip(n.saturating_sub(2)) {
            d.set_dim_value(i64::from(side));
        }
    }

    /// How many nodes the graph has.
    pub fn node_count(&self) -> usize {
        self.model.graph.as_ref().map_or(0, |g| g.node.len())
    }

    /// Renames a tensor wherever a node reads or writes it (not in the graph's own inputs and
    /// outputs).
    pub fn rename(&mut self, from: &str, to: &str) {
        for node in &mut self.graph_mut().node {
            for t in node.input.iter_mut().chain(node.output.iter_mut()) {
                if t == from {
                    *t = to.to_string();
                }
            }
        }
    }

    /// The names of the tensors nodes read or write.
    pub fn tensor_names(&self) -> HashSet<String> {
        self.model
            .graph
            .as_ref()
            .map(|g| {
                g.node
                    .iter()
                    .flat_map(|n| n.input.iter().chain(&n.output).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Removes the nodes whose name starts with `prefix` and the initializers whose name does.
    /// Returns how many nodes were removed.
    pub fn remove_named(&mut self, prefix: &str) -> usize {
        let graph = self.graph_mut();
        let before = graph.node.len();
        graph.node.retain(|n| !n.name.starts_with(prefix));
        graph.initializer.retain(|t| !t.name.starts_with(prefix));
        before - graph.node.len()
    }

    fn graph_mut(&mut self) -> &mut onnx_protobuf::GraphProto {
        self.model.graph.mut_or_insert_default()
    }

    /// Adds an output to the graph's outputs (float32, a dynamic batch dimension followed by
    /// `dims`), keeping the others.
    pub fn add_output(&mut self, name: &str, dims: &[i64]) {
        self.graph_mut().output.push(value_info(name, dims));
    }

    /// Makes `outputs` the graph's outputs, each float32 with a dynamic batch dimension followed
    /// by the given dimensions, then removes every node and initializer they do not need.
    pub fn set_outputs(&mut self, outputs: &[(&str, Vec<i64>)]) {
        let graph = self.model.graph.mut_or_insert_default();
        graph.output = outputs
            .iter()
            .map(|(name, dims)| value_info(name, dims))
            .collect();
        // Keep the nodes the outputs depend on (walk backwards; nodes are topologically sorted).
        let mut needed: HashSet<String> = outputs.iter().map(|(n, _)| n.to_string()).collect();
        let mut keep = vec![false; graph.node.len()];
        for (i, node) in graph.node.iter().enumerate().rev() {
            if node.output.iter().any(|o| needed.contains(o)) {
                keep[i] = true;
                needed.extend(node.input.iter().cloned());
            }
        }
        let mut k = keep.into_iter();
        graph.node.retain(|_| k.next().unwrap_or(false));
        graph.initializer.retain(|t| needed.contains(&t.name));
        graph.value_info.retain(|v| needed.contains(&v.name));
    }

    /// Sets (or replaces) a `metadata_props` entry.
    pub fn set_metadata(&mut self, key: &str, value: &str) {
        self.model.metadata_props.retain(|e| e.key != key);
        self.model.metadata_props.push(StringStringEntryProto {
            key: key.to_string(),
            value: value.to_string(),
            ..Default::default()
        });
    }

    /// A `metadata_props` entry.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.model
            .metadata_props
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    }

    /// Sets the producer fields.
    pub fn set_producer(&mut self, name: &str, version: &str) {
        self.model.producer_name = name.to_string();
        self.model.producer_version = version.to_string();
    }
}

/// A float initializer, stored as float32 or, with `as_f16`, as float16.
fn float_tensor(name: &str, dims: &[usize], data: &[f32], as_f16: bool) -> TensorProto {
    assert_eq!(dims.iter().product::<usize>(), data.len(), "{name}");
    let (data_type, raw_data) = if as_f16 {
        let bytes = data
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes());
        (DataType::FLOAT16, bytes.collect())
    } else {
        (
            DataType::FLOAT,
            data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )
    };
    TensorProto {
        name: name.to_string(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: data_type as i32,
        raw_data,
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    let mut batch = onnx_protobuf::tensor_shape_proto::Dimension::new();
    batch.set_dim_param("N".to_string());
    shape.dim.push(batch);
    for &d in dims {
        let mut dim = onnx_protobuf::tensor_shape_proto::Dimension::new();
        dim.set_dim_value(d);
        shape.dim.push(dim);
    }
    let mut tensor = type_proto::Tensor::new();
    tensor.elem_type = DataType::FLOAT as i32;
    tensor.shape = Some(shape).into();
    let mut ty = TypeProto::new();
    ty.set_tensor_type(tensor);
    ValueInfoProto {
        name: name.to_string(),
        type_: Some(ty).into(),
        ..Default::default()
    }
}
