//! What the operators' tests share: deterministic inputs, a model run once
//! through tract, and the bundled model as the compile step sees it.
#![cfg(test)]

use tract_onnx::prelude::*;

use crate::ops::depthwise::Geometry;
use crate::ops::{Level, Simd};

pub(crate) use crate::ops::noise;

/// The definition of max pooling over `planes` planes: the largest input
/// under each window, padding and the ceil-mode overhang left out.
pub(crate) fn max_pool(g: &Geometry, planes: usize, input: &[f32]) -> Vec<f32> {
    let ((h, w), (ho, wo), k) = (g.in_hw, g.out_hw, g.kernel);
    let mut out = vec![f32::NEG_INFINITY; planes * ho * wo];
    for p in 0..planes {
        for y in 0..ho {
            for x in 0..wo {
                for ky in 0..k {
                    for kx in 0..k {
                        let iy = (y * g.stride.0 + ky) as isize - g.pad.0 as isize;
                        let ix = (x * g.stride.1 + kx) as isize - g.pad.1 as isize;
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            continue;
                        }
                        let v = input[(p * h + iy as usize) * w + ix as usize];
                        let o = &mut out[(p * ho + y) * wo + x];
                        *o = o.max(v);
                    }
                }
            }
        }
    }
    out
}

/// The max pools (kernel, stride, padding, ceil mode) the tests of a
/// layer joined to its pool run: 3x3 stride 2 padded (ResNet's) and in
/// ceil mode (SqueezeNet's), 2x2 stride 2, and 3x3 stride 1.
pub(crate) const JOINED_POOLS: [(usize, usize, usize, bool); 4] = [
    (3, 2, 1, false),
    (3, 2, 0, true),
    (2, 2, 0, false),
    (3, 1, 1, false),
];

/// A max pool over `channels` planes of `in_hw`: `kernel`, `stride`, the
/// same padding on every side, the output rounded up in ceil mode as
/// ONNX does (no window starting past the input and its leading padding).
pub(crate) fn pool_over(
    (channels, in_hw): (usize, (usize, usize)),
    (kernel, stride, pad): (usize, usize, usize),
    ceil: bool,
) -> Geometry {
    let len = |n: usize| {
        let span = n + 2 * pad - kernel;
        let out = if ceil {
            span.div_ceil(stride)
        } else {
            span / stride
        } + 1;
        if ceil && (out - 1) * stride >= n + pad {
            out - 1
        } else {
            out
        }
    };
    Geometry {
        channels,
        in_hw,
        out_hw: (len(in_hw.0), len(in_hw.1)),
        kernel,
        stride: (stride, stride),
        pad: (pad, pad),
    }
}

/// `model` optimised and run once on `input`: its first output's values.
pub(crate) fn run_optimized(model: TypedModel, input: &Tensor) -> Vec<f32> {
    let out = model
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap()
        .run(tvec![input.clone().into()])
        .unwrap();
    out[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

/// `model` run as it is, not optimised, on `inputs`: its first output's
/// values (an installer's graph before and after, compared).
pub(crate) fn run_plain(model: &TypedModel, inputs: &[&Tensor]) -> Vec<f32> {
    run_plain_all(model, inputs).remove(0)
}

/// [`run_plain`], every output's values.
pub(crate) fn run_plain_all(model: &TypedModel, inputs: &[&Tensor]) -> Vec<Vec<f32>> {
    let inputs = inputs.iter().map(|t| (*t).clone().into()).collect();
    let out = model.clone().into_runnable().unwrap().run(inputs).unwrap();
    out.iter()
        .map(|t| {
            t.to_plain_array_view::<f32>()
                .unwrap()
                .iter()
                .copied()
                .collect()
        })
        .collect()
}

/// The bundled MobileNetV2 at batch 1, as the loader's declutter leaves
/// it (where the operators are installed).
pub(crate) fn bundled_decluttered() -> TypedModel {
    let path = crate::config::bundled_model_path();
    let mut graph = tract_onnx::onnx().model_for_path(&path).unwrap();
    graph
        .set_input_fact(0, f32::fact([1, 3, 224, 224]).into())
        .unwrap();
    let mut model = graph.into_typed().unwrap();
    crate::model::declutter::declutter(&mut model).unwrap();
    model
}

/// The levels a kernel test runs: those in `kernels` (the levels the
/// operator has kernels for) that this CPU has, lowest first; it prints
/// them, so a run shows what was tested.
///
/// CI names the levels its machine has in `ONNX_LAMBDA_EXPECT_SIMD`
/// (`.ci/run` reads them from `/proc/cpuinfo`, not from the detection
/// under test): there, a level the machine has and the operator
/// implements must be among them, or the test fails instead of passing
/// with a kernel untested.
pub(crate) fn levels(what: &str, kernels: &[Simd]) -> Vec<Level> {
    let run: Vec<Level> = Level::available()
        .into_iter()
        .filter(|l| kernels.contains(&l.simd()))
        .collect();
    let names: Vec<&str> = run.iter().map(|l| l.simd().name()).collect();
    eprintln!("{what}: runs at {names:?}");
    if let Ok(expected) = std::env::var("ONNX_LAMBDA_EXPECT_SIMD") {
        for name in expected.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let level = Simd::parse(name).unwrap();
            assert!(
                !kernels.contains(&level) || run.iter().any(|l| l.simd() == level),
                "{what}: this machine has {name}, and its kernel would not run (only {names:?})"
            );
        }
    }
    run
}

/// Every level: for operators with a kernel at each.
pub(crate) const ALL_LEVELS: &[Simd] = &[Simd::Portable, Simd::Avx2, Simd::Avx512, Simd::Neon];
/// The vector levels: for operators without a portable kernel.
pub(crate) const VECTOR_LEVELS: &[Simd] = &[Simd::Avx2, Simd::Avx512, Simd::Neon];

/// ONNX graphs written out in tests, as the loader parses and declutters
/// them: the installers' input when a test needs tract-onnx's own
/// expansion of an operator.
pub(crate) mod onnx {
    use tract_onnx::pb::{attribute_proto::AttributeType, tensor_proto::DataType, *};
    use tract_onnx::prelude::*;

    /// An integer-list attribute.
    pub(crate) fn ints(name: &str, values: &[i64]) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::Ints as i32,
            ints: values.to_vec(),
            ..Default::default()
        }
    }

    /// An integer attribute.
    pub(crate) fn int(name: &str, value: i64) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::Int as i32,
            i: value,
            ..Default::default()
        }
    }

    /// A float attribute.
    pub(crate) fn float(name: &str, value: f32) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::Float as i32,
            f: value,
            ..Default::default()
        }
    }

    /// A node with one output.
    pub(crate) fn node(
        op: &str,
        inputs: &[&str],
        output: &str,
        attribute: Vec<AttributeProto>,
    ) -> NodeProto {
        NodeProto {
            input: inputs.iter().map(|i| i.to_string()).collect(),
            output: vec![output.into()],
            op_type: op.into(),
            attribute,
            ..Default::default()
        }
    }

    /// A square `MaxPool` node of `kernel` and `stride`, with any further
    /// attributes (padding, ceil mode).
    pub(crate) fn max_pool(
        input: &str,
        output: &str,
        (kernel, stride): (i64, i64),
        more: Vec<AttributeProto>,
    ) -> NodeProto {
        let mut attributes = vec![
            ints("kernel_shape", &[kernel; 2]),
            ints("strides", &[stride; 2]),
        ];
        attributes.extend(more);
        node("MaxPool", &[input], output, attributes)
    }

    /// An f32 initializer of `dims` with deterministic values.
    pub(crate) fn weights(name: &str, dims: Vec<i64>, seed: u32) -> TensorProto {
        TensorProto {
            name: name.into(),
            float_data: super::noise(dims.iter().product::<i64>() as usize, seed),
            dims,
            data_type: DataType::Float as i32,
            ..Default::default()
        }
    }

    /// The graph of `nodes` with one f32 input `x` of `shape` and one
    /// output `y`, at `opset`, parsed, typed and decluttered.
    pub(crate) fn decluttered(
        nodes: Vec<NodeProto>,
        initializer: Vec<TensorProto>,
        shape: &[i64],
        opset: i64,
    ) -> TypedModel {
        let dim = |d: &i64| tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimValue(*d)),
            ..Default::default()
        };
        let tensor = type_proto::Tensor {
            elem_type: DataType::Float as i32,
            shape: Some(TensorShapeProto {
                dim: shape.iter().map(dim).collect(),
            }),
        };
        let graph = GraphProto {
            node: nodes,
            initializer,
            input: vec![ValueInfoProto {
                name: "x".into(),
                r#type: Some(TypeProto {
                    value: Some(type_proto::Value::TensorType(tensor)),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            output: vec![ValueInfoProto {
                name: "y".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let proto = ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: opset,
            }],
            graph: Some(graph),
            ..Default::default()
        };
        let model = tract_onnx::onnx().model_for_proto_model(&proto).unwrap();
        let mut typed = model.into_typed().unwrap();
        crate::model::declutter::declutter(&mut typed).unwrap();
        typed
    }
}
