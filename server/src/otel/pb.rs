//! The generated OTLP types (proto/opentelemetry): the trace export service and the messages it carries,
//! one module per protobuf package, nested as the packages are.

#[allow(clippy::all, missing_docs)]
pub mod opentelemetry {
    pub mod proto {
        pub mod common {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.common.v1");
            }
        }
        pub mod resource {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.resource.v1");
            }
        }
        pub mod trace {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.trace.v1");
            }
        }
        pub mod collector {
            pub mod trace {
                pub mod v1 {
                    tonic::include_proto!("opentelemetry.proto.collector.trace.v1");
                }
            }
        }
    }
}

pub use opentelemetry::proto::collector::trace::v1 as collector;
pub use opentelemetry::proto::common::v1 as common;
pub use opentelemetry::proto::resource::v1 as resource;
pub use opentelemetry::proto::trace::v1 as trace;
