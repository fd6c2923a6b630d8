//! Test-time looks: a model that looks at each photo twice and averages what it sees. A
//! garment's category, its view and its colour do not change in a mirror or from a step further
//! back, so the two looks are two opinions of the same photo; their mean is more often right, at
//! twice the work.
//!
//! The first look is the centre crop the model was trained on. The second is either its mirror
//! image ([`SecondLook::Mirror`]: on In-shop val it moved the view head from 74.9% to 75.4%), or
//! the whole square the crop is cut from, shrunk to the crop's size, as it is or mirrored
//! ([`SecondLook::Whole`], [`SecondLook::WholeMirrored`]): the garment a little smaller and
//! nothing cut off, a second scale where the mirror is only a second side. A model with a whole
//! second look takes the whole square as its input and cuts its crop itself.
//!
//! The looks live in the ONNX graph, so every runtime that loads the model (ONNX Runtime from
//! Python, a Triton server) gives the same answers as `fashion` without knowing about them: the
//! batch is doubled with the second looks in front of the backbone, and each output is brought
//! back to one row per photo behind the heads. [`remove`] takes them out again for the
//! single-look speed.
//!
//! Every node and initializer added here has a name that starts with [`PREFIX`]; the doubled
//! tensor behind graph input or output `X` is called `flip/pair/X`.

use serde::{Deserialize, Serialize};

use crate::onnx::{Attr, Graph};

/// The oldest ONNX operator set whose `Shape` takes the `end` attribute the flip uses.
pub const MIN_OPSET: i64 = 15;

/// Name prefix of everything the test-time flip adds to a graph.
pub const PREFIX: &str = "flip/";
const PAIR: &str = "flip/pair/";

/// What a model's second look at a photo sees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecondLook {
    /// The crop, mirrored left to right.
    #[default]
    Mirror,
    /// The whole square the crop is cut from, shrunk to the crop's size.
    Whole,
    /// The whole square, shrunk to the crop's size and mirrored.
    WholeMirrored,
}

impl SecondLook {
    /// Whether the second look needs the whole square, so that the model takes the square as its
    /// input and cuts its crop itself.
    pub fn whole(self) -> bool {
        self != SecondLook::Mirror
    }

    /// The opposite of [`SecondLook::whole`] (serde's `skip_serializing_if` takes a reference).
    pub(crate) fn is_mirror(&self) -> bool {
        !self.whole()
    }
}

/// How an output's two looks become one row per photo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// The mean of both (class probabilities).
    Average,
    /// The mean of both, after the mirrored look's last axis is mirrored back (a map laid out
    /// like the photo, such as the garment mask; for [`SecondLook::Mirror`] only: a whole look
    /// lays its map out over the whole square).
    AverageMirroredBack,
    /// The first look's (feature maps kept for heat maps and other readers).
    First,
}

fn pair(name: &str) -> String {
    format!("{PAIR}{name}")
}

/// Makes the graph look at each photo of `input` twice and combines each of `outputs` (graph
/// outputs) as it says. With [`SecondLook::Mirror`] the input stays the `crop x crop` photo
/// (`[N, C, crop, crop]`); with a whole second look it becomes the `side x side` square
/// (`[N, C, side, side]`) and the graph cuts the centre crop for the first look. The graph must
/// import opset [`MIN_OPSET`] or later.
pub fn add(
    g: &mut Graph,
    input: &str,
    outputs: &[(&str, Combine)],
    look: SecondLook,
    crop: u32,
    side: u32,
) {
    let (zero, max, half, n) = ("flip/zero", "flip/max", "flip/half", "flip/n");
    g.initializer_i64(zero, &[0]);
    add_mirror_bounds(g);
    g.initializer_i64(max, &[i64::MAX]);
    g.initializer(half, &[], vec![0.5]);
    let doubled = pair(input);
    g.rename(input, &doubled);
    for (o, _) in outputs {
        g.rename(o, &pair(o));
    }
    let before = g.node_count();
    // In front of everything: [N] photos -> [2N]: the first looks, then the second.
    let (first, second) = if look.whole() {
        add_whole_looks(g, input, look, crop, side)
    } else {
        (input.to_string(), mirror_node(g, input, "flip/mirrored"))
    };
    let axis = vec![("axis", Attr::Int(0))];
    g.node("Concat", &[&first, &second], &doubled, axis);
    g.node("Shape", &[input], n, vec![("end", Attr::Int(1))]);
    // Everything added so far goes in front of the backbone.
    g.move_last_to_front(g.node_count() - before);
    // Behind the heads: [2N] rows -> [N].
    for &(o, how) in outputs {
        let both = pair(o);
        let out_node = format!("flip/out/{o}");
        let first = format!("flip/first/{o}");
        let end = g.node_count();
        if how == Combine::First {
            g.insert_node(end, &out_node, "Slice", &[&both, zero, n, zero], o, vec![]);
            continue;
        }
        g.node("Slice", &[&both, zero, n, zero], &first, vec![]);
        let mut second = format!("flip/second/{o}");
        g.node("Slice", &[&both, n, max, zero], &second, vec![]);
        if how == Combine::AverageMirroredBack {
            second = mirror_node(g, &second, &format!("flip/mirrored_back/{o}"));
        }
        let sum = format!("flip/sum/{o}");
        g.node("Add", &[&first, &second], &sum, vec![]);
        let end = g.node_count();
        g.insert_node(end, &out_node, "Mul", &[&sum, half], o, vec![]);
    }
    if look.whole() {
        g.set_input_side(input, side);
    }
}

/// Adds the initializers [`mirror_node`] reads: `flip/back` (-1) and `flip/min`.
fn add_mirror_bounds(g: &mut Graph) {
    g.initializer_i64("flip/back", &[-1]);
    g.initializer_i64("flip/min", &[i64::MIN]);
}

/// Adds a node that reads `x`'s last axis backwards (`Slice(starts -1, ends -inf, axes -1,
/// steps -1)`), writing `out`; returns `out`. Needs [`add_mirror_bounds`].
fn mirror_node(g: &mut Graph, x: &str, out: &str) -> String {
    g.node(
        "Slice",
        &[x, "flip/back", "flip/min", "flip/back", "flip/back"],
        out,
        vec![],
    );
    out.to_string()
}

/// The two looks at a `side x side` input: its centre `crop x crop` square, and the whole
/// square's second look ([`add_whole_look`]).
fn add_whole_looks(
    g: &mut Graph,
    input: &str,
    look: SecondLook,
    crop: u32,
    side: u32,
) -> (String, String) {
    let at = i64::from(side.saturating_sub(crop) / 2);
    let (starts, ends, axes) = ("flip/crop_starts", "flip/crop_ends", "flip/hw");
    g.initializer_i64(starts, &[at, at]);
    g.initializer_i64(ends, &[at + i64::from(crop), at + i64::from(crop)]);
    g.initializer_i64(axes, &[2, 3]);
    let centre = "flip/centre";
    g.node("Slice", &[input, starts, ends, axes], centre, vec![]);
    (centre.to_string(), add_whole_look(g, input, look, crop))
}

/// The whole square of `input` shrunk to `crop x crop` by linear interpolation, mirrored for
/// [`SecondLook::WholeMirrored`].
fn add_whole_look(g: &mut Graph, input: &str, look: SecondLook, crop: u32) -> String {
    // Resize to [N, C, crop, crop]: the sizes are the input's first two dimensions and the crop.
    let (nc, hw, sizes) = ("flip/nc", "flip/crop_hw", "flip/sizes");
    g.initializer_i64(hw, &[i64::from(crop), i64::from(crop)]);
    g.node("Shape", &[input], nc, vec![("end", Attr::Int(2))]);
    g.node("Concat", &[nc, hw], sizes, vec![("axis", Attr::Int(0))]);
    let whole = "flip/whole";
    g.node(
        "Resize",
        &[input, "", "", sizes],
        whole,
        vec![("mode", Attr::Str("linear".into()))],
    );
    if look == SecondLook::WholeMirrored {
        mirror_node(g, whole, "flip/whole_mirrored")
    } else {
        whole.to_string()
    }
}

/// Makes a single-look graph (`input`: `[N, C, crop, crop]`) see only the second look of a
/// model with a whole second look: it takes the `side x side` square and looks at it as
/// [`add`] makes the second look. Training uses it to learn from the looks the model will take.
pub fn only_whole_look(g: &mut Graph, input: &str, look: SecondLook, crop: u32, side: u32) {
    assert!(look.whole(), "only a whole second look takes the square");
    let seen = pair(input);
    g.rename(input, &seen);
    add_mirror_bounds(g);
    let before = g.node_count();
    let second = add_whole_look(g, input, look, crop);
    g.node("Identity", &[&second], &seen, vec![]);
    g.move_last_to_front(g.node_count() - before);
    g.set_input_side(input, side);
}

/// Takes the second look out of a graph, leaving the single look it was added to: a model that
/// took the whole square takes the `crop x crop` photo again. Returns whether the graph had a
/// second look.
pub fn remove(g: &mut Graph, crop: u32) -> bool {
    let whole = g.tensor_names().contains("flip/whole");
    if g.remove_named(PREFIX) == 0 {
        return false;
    }
    if whole {
        for input in g.input_names() {
            g.set_input_side(&input, crop);
        }
    }
    for t in g.tensor_names() {
        if let Some(original) = t.strip_prefix(PAIR) {
            g.rename(&t, original);
        }
    }
    true
}
