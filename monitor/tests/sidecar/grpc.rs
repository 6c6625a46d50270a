//! gRPC clients of the sidecar's stream: plain, or presenting an `authorization` value; and a stream of
//! messages sent whole.

use keel_monitor::sidecar::Sidecar;
use keel_monitor::sidecar::pb::monitor_service_client::MonitorServiceClient;
use keel_monitor::sidecar::pb::{self, MonitorMessage};
use tonic::transport::Channel;

pub(crate) async fn client(sidecar: &Sidecar) -> MonitorServiceClient<Channel> {
    MonitorServiceClient::connect(format!("http://{}", sidecar.grpc_addr()))
        .await
        .unwrap()
}

pub(crate) async fn send_all(
    client: &mut MonitorServiceClient<Channel>,
    messages: Vec<MonitorMessage>,
) -> Result<pb::StreamSummary, tonic::Status> {
    Ok(client
        .stream(tokio_stream::iter(messages))
        .await?
        .into_inner())
}

/// A client presenting `authorization` as given (None: no metadata at all).
pub(crate) async fn client_with(
    sidecar: &Sidecar,
    authorization: Option<&str>,
) -> MonitorServiceClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + use<>,
    >,
> {
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", sidecar.grpc_addr()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let value = authorization.map(|a| a.parse::<tonic::metadata::AsciiMetadataValue>().unwrap());
    MonitorServiceClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
        if let Some(value) = &value {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    })
}
