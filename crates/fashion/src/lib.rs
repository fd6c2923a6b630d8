//! # fashion
//!
//! Tags photos of clothes: garment category, view of the shot and colours, each with a
//! confidence. The pipeline, in the order a photo goes through it:
//!
//! - [`image`]: decode any common format into RGB ([`image::load`]).
//! - [`preprocess`]: the one path from RGB to the model's input ([`Preprocess`]).
//! - [`engine`]: ONNX Runtime ([`Engine`]).
//! - [`model`]: a model file and its metadata ([`Model`]).
//! - [`predict`]: photos to [`Prediction`]s ([`Classifier`]).
//! - [`colour`]: colour maths, naming and the pixel palette.
//! - [`data`], [`train`], [`eval`]: datasets, training the heads, measuring a model.

pub mod engine;
pub mod error;
pub mod image;
mod jpeg_dc;
pub mod preprocess;

pub use engine::{Engine, Threads};
pub use error::{Error, Result};
pub use preprocess::{Fit, Preprocess};
pub mod data;
pub mod model;
pub mod onnx;
pub mod train;

pub use model::Model;
pub mod colour;
pub mod predict;

pub use predict::{Classifier, ClassifyOptions, Prediction};
pub mod eval;
pub mod explain;
pub mod export;
pub mod hash;
pub mod mask;
pub mod mirror;
pub mod stream;
pub use stream::StreamOptions;
