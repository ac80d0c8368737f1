//! Kafka client settings and topic set-up shared by the source and the load
//! generator.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::{RDKafkaConfRes, RDKafkaErrorCode};
use rdkafka::ClientConfig;

/// A client configuration for `brokers` with `extra` librdkafka properties on top.
pub fn client_config(brokers: &str, extra: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (k, v) in extra {
        config.set(k, v);
    }
    config
}

/// `error` safe to show. librdkafka's refusal of a property (an unknown
/// name, a value it rejects) carries the value, quoted in its description
/// too. It is hidden wherever it appears for a key
/// [`crate::redact::is_secret_key`] marks, and for a key librdkafka does
/// not know: a misspelt `sasl.pasword` is a password all the same.
pub fn without_secrets(error: KafkaError) -> KafkaError {
    match error {
        KafkaError::ClientConfig(code, description, key, value)
            if code == RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN || crate::redact::is_secret_key(&key) =>
        {
            let description = if value.is_empty() { description } else { description.replace(&value, crate::redact::HIDDEN) };
            KafkaError::ClientConfig(code, description, key, crate::redact::HIDDEN.into())
        }
        other => other,
    }
}

/// Creates `topic` with `partitions` partitions unless it exists already.
pub async fn ensure_topic(brokers: &str, topic: &str, partitions: i32) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers, &BTreeMap::new()).create()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics([&new], &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(|_| tracing::error!(topic = %name, "cannot create topic"))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::stages::source::config::SourceConfig;

    #[test]
    fn a_secret_kafka_property_librdkafka_refuses_is_named_without_its_value() {
        let config: SourceConfig = toml::from_str("kafka = { \"sasl.passwrod\" = \"s3cret-value\" }").unwrap();
        let offsets = crate::stages::source::OffsetLookup::start("postgres://nobody@127.0.0.1:1/none").unwrap();
        let error = crate::stages::source::connect(&config, offsets, Arc::default()).err().expect("librdkafka refuses the misspelt key");
        let shown = error.to_string();
        assert!(shown.contains("sasl.passwrod") && !shown.contains("s3cret"), "{shown}");
    }
}
