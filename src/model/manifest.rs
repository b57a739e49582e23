//! The model manifest: what a classifier expects, in one small JSON file.
//!
//! A manifest lets a user bring any ONNX image classifier by writing one file
//! next to the `.onnx` (same name, `.json` extension). Every field is
//! optional; what is missing is inferred from the ONNX input, then falls back
//! to the ImageNet defaults (see [`Manifest::imagenet_defaults`]). The format
//! is documented with examples in `models/README.md`.

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// Memory layout of the input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// Batch, channels, height, width (PyTorch exports: MobileNet, ResNet, SqueezeNet).
    #[serde(rename = "NCHW")]
    Nchw,
    /// Batch, height, width, channels (TensorFlow exports: EfficientNet-Lite).
    #[serde(rename = "NHWC")]
    Nhwc,
}

/// Resampling filter used when resizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// Nearest neighbour: fastest, lowest fidelity.
    Nearest,
    /// Bilinear with antialiasing, as Pillow's `BILINEAR` (torchvision default).
    Bilinear,
    /// Bicubic with antialiasing, as Pillow's `BICUBIC`.
    Bicubic,
    /// Lanczos3, as Pillow's `LANCZOS`.
    Lanczos3,
}

/// How the resized image is brought to the input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Crop {
    /// Resize the shorter side to `resize_shorter_side`, then cut the centre.
    Center,
    /// Stretch the whole image to the input size, ignoring aspect ratio.
    None,
}

/// Whether the model output is already a probability distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// Raw scores: we apply softmax.
    Logits,
    /// Already softmaxed: used as is.
    Probabilities,
}

/// Description of the input tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Input tensor name (informational; the first model input is used).
    #[serde(default)]
    pub name: Option<String>,
    /// Tensor layout.
    pub layout: Layout,
    /// Input height in pixels.
    pub height: u32,
    /// Input width in pixels.
    pub width: u32,
}

/// Preprocessing applied to every image before inference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocessing {
    /// With `crop: center`, the shorter side is resized to this many pixels
    /// first (256 for a 224 input, the classic 0.875 crop ratio).
    pub resize_shorter_side: u32,
    /// How the resized image is cut to the input size.
    pub crop: Crop,
    /// Resampling filter.
    pub interpolation: Interpolation,
    /// Pixel values (0..=255) are multiplied by this first: 1/255 for
    /// models trained on [0, 1] inputs, 1.0 for models trained on 0..255.
    pub scale: f32,
    /// Per-channel mean subtracted after scaling, in channel order.
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by after the mean.
    pub std: [f32; 3],
    /// Channel order the model was trained with: `RGB` or `BGR`.
    pub channel_order: ChannelOrder,
}

/// Channel order of the input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChannelOrder {
    /// Red, green, blue (almost every modern model).
    #[serde(rename = "RGB")]
    Rgb,
    /// Blue, green, red (Caffe-era models).
    #[serde(rename = "BGR")]
    Bgr,
}

/// Description of the output tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Output tensor name (informational; the first model output is used).
    #[serde(default)]
    pub name: Option<String>,
    /// Logits or probabilities.
    pub kind: OutputKind,
}

/// Everything the pipeline needs to know about a classifier besides its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Model name, reported with every prediction.
    pub name: String,
    /// Model version, reported with every prediction.
    pub version: String,
    /// Input tensor.
    pub input: InputSpec,
    /// Image preprocessing.
    pub preprocessing: Preprocessing,
    /// Labels file, relative to the manifest: one class per line, in output
    /// order. A leading WordNet id (`n01440764 tench, Tinca tinca`) is dropped.
    #[serde(default)]
    pub labels: Option<String>,
    /// Output tensor.
    pub output: OutputSpec,
}

/// The manifest as written by a user: every field optional, merged over defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialManifest {
    name: Option<String>,
    version: Option<String>,
    input: Option<PartialInput>,
    preprocessing: Option<PartialPreprocessing>,
    labels: Option<String>,
    output: Option<PartialOutput>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialInput {
    name: Option<String>,
    layout: Option<Layout>,
    height: Option<u32>,
    width: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialPreprocessing {
    resize_shorter_side: Option<u32>,
    crop: Option<Crop>,
    interpolation: Option<Interpolation>,
    scale: Option<f32>,
    mean: Option<[f32; 3]>,
    std: Option<[f32; 3]>,
    channel_order: Option<ChannelOrder>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialOutput {
    name: Option<String>,
    kind: Option<OutputKind>,
}

/// What the ONNX graph itself tells us about its input, used to fill gaps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InferredInput {
    /// Name of the first input.
    pub name: Option<String>,
    /// Layout guessed from which axis has 3 channels.
    pub layout: Option<Layout>,
    /// Fixed height, if the graph declares one.
    pub height: Option<u32>,
    /// Fixed width, if the graph declares one.
    pub width: Option<u32>,
}

impl Manifest {
    /// The torchvision ImageNet recipe: 224x224 NCHW RGB, shorter side to 256,
    /// centre crop, bilinear, scale 1/255, ImageNet mean/std, logits out.
    pub fn imagenet_defaults(name: &str) -> Manifest {
        Manifest {
            name: name.to_string(),
            version: "unversioned".to_string(),
            input: InputSpec {
                name: None,
                layout: Layout::Nchw,
                height: 224,
                width: 224,
            },
            preprocessing: Preprocessing {
                resize_shorter_side: 256,
                crop: Crop::Center,
                interpolation: Interpolation::Bilinear,
                scale: 1.0 / 255.0,
                mean: [0.485, 0.456, 0.406],
                std: [0.229, 0.224, 0.225],
                channel_order: ChannelOrder::Rgb,
            },
            labels: None,
            output: OutputSpec {
                name: None,
                kind: OutputKind::Logits,
            },
        }
    }

    /// Builds the manifest for a model: `json` (if any) over what the graph
    /// declares (`inferred`) over the ImageNet defaults.
    ///
    /// `origin` names the manifest in error messages.
    pub fn resolve(
        json: Option<&[u8]>,
        origin: &str,
        default_name: &str,
        inferred: &InferredInput,
    ) -> Result<Manifest, ModelError> {
        let bad = |reason: String| ModelError::Manifest {
            path: origin.to_string(),
            reason,
        };
        let partial: PartialManifest = match json {
            Some(bytes) => serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?,
            None => PartialManifest::default(),
        };
        let mut m = Manifest::imagenet_defaults(default_name);
        let input = partial.input.unwrap_or_default();
        m.input.name = input.name.or_else(|| inferred.name.clone());
        m.input.layout = input.layout.or(inferred.layout).unwrap_or(m.input.layout);
        m.input.height = input.height.or(inferred.height).unwrap_or(m.input.height);
        m.input.width = input.width.or(inferred.width).unwrap_or(m.input.width);
        let size_changed = m.input.height != 224 || m.input.width != 224;

        let p = partial.preprocessing.unwrap_or_default();
        let pre = &mut m.preprocessing;
        // Keep the 0.875 crop ratio when only the input size is known.
        pre.resize_shorter_side = p.resize_shorter_side.unwrap_or(if size_changed {
            ((m.input.height.min(m.input.width) as f32) / 0.875).round() as u32
        } else {
            pre.resize_shorter_side
        });
        pre.crop = p.crop.unwrap_or(pre.crop);
        pre.interpolation = p.interpolation.unwrap_or(pre.interpolation);
        pre.scale = p.scale.unwrap_or(pre.scale);
        pre.mean = p.mean.unwrap_or(pre.mean);
        pre.std = p.std.unwrap_or(pre.std);
        pre.channel_order = p.channel_order.unwrap_or(pre.channel_order);

        if let Some(name) = partial.name {
            m.name = name;
        }
        if let Some(version) = partial.version {
            m.version = version;
        }
        m.labels = partial.labels;
        let out = partial.output.unwrap_or_default();
        m.output.name = out.name;
        m.output.kind = out.kind.unwrap_or(m.output.kind);
        m.validate().map_err(bad)?;
        Ok(m)
    }

    /// Rejects values that would make preprocessing meaningless or blow up.
    fn validate(&self) -> Result<(), String> {
        let (h, w) = (self.input.height, self.input.width);
        if !(8..=4096).contains(&h) || !(8..=4096).contains(&w) {
            return Err(format!(
                "input size {w}x{h} is out of range: height and width must be between 8 and 4096"
            ));
        }
        let pre = &self.preprocessing;
        if pre.crop == Crop::Center && pre.resize_shorter_side < h.max(w) {
            return Err(format!(
                "resize_shorter_side {} is smaller than the input size {w}x{h}: it must be at least {}",
                pre.resize_shorter_side,
                h.max(w)
            ));
        }
        if pre.resize_shorter_side > 8192 {
            return Err("resize_shorter_side must be at most 8192".into());
        }
        if !pre.scale.is_finite() || pre.scale <= 0.0 {
            return Err(format!(
                "scale must be a positive number, got {}",
                pre.scale
            ));
        }
        if pre.std.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err(format!(
                "every std must be a positive number, got {:?}",
                pre.std
            ));
        }
        if pre.mean.iter().any(|m| !m.is_finite()) {
            return Err(format!(
                "every mean must be a finite number, got {:?}",
                pre.mean
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_manifest_gives_imagenet_defaults() {
        let m = Manifest::resolve(Some(b"{}"), "m.json", "x", &InferredInput::default()).unwrap();
        assert_eq!(m, Manifest::imagenet_defaults("x"));
    }

    #[test]
    fn inferred_size_keeps_crop_ratio() {
        let inferred = InferredInput {
            layout: Some(Layout::Nhwc),
            height: Some(300),
            width: Some(300),
            ..Default::default()
        };
        let m = Manifest::resolve(None, "-", "x", &inferred).unwrap();
        assert_eq!(m.input.layout, Layout::Nhwc);
        assert_eq!(m.preprocessing.resize_shorter_side, 343);
    }

    #[test]
    fn manifest_overrides_inferred_values() {
        let json = br#"{"name":"effnet","input":{"layout":"NHWC","height":224,"width":224},
            "preprocessing":{"scale":1.0,"mean":[127,127,127],"std":[128,128,128],"resize_shorter_side":224},
            "output":{"kind":"probabilities"}}"#;
        let inferred = InferredInput {
            layout: Some(Layout::Nchw),
            ..Default::default()
        };
        let m = Manifest::resolve(Some(json), "m.json", "x", &inferred).unwrap();
        assert_eq!(m.name, "effnet");
        assert_eq!(m.input.layout, Layout::Nhwc);
        assert_eq!(m.preprocessing.mean, [127.0; 3]);
        assert_eq!(m.output.kind, OutputKind::Probabilities);
    }

    #[test]
    fn bad_values_are_named() {
        for (json, needle) in [
            (r#"{"preprocessing":{"std":[0,1,1]}}"#, "std"),
            (
                r#"{"preprocessing":{"resize_shorter_side":100}}"#,
                "resize_shorter_side",
            ),
            (r#"{"input":{"height":0}}"#, "input size"),
            (r#"{"inputs":{}}"#, "unknown field"),
            (r#"{"input":{"layout":"CHW"}}"#, "unknown variant"),
        ] {
            let err = Manifest::resolve(
                Some(json.as_bytes()),
                "m.json",
                "x",
                &InferredInput::default(),
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.contains(needle) && err.contains("m.json"),
                "{json}: {err}"
            );
        }
    }
}
