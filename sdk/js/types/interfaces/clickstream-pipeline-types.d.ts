declare module 'clickstream:pipeline/types@0.2.0' {
  /**
   * A user attribute's value.
   */
  export type Value = ValueStr | ValueInt | ValueFloat | ValueBoolean;
  /**
   * Text.
   */
  export interface ValueStr {
    tag: 'str',
    val: string,
  }
  /**
   * A whole number.
   */
  export interface ValueInt {
    tag: 'int',
    val: bigint,
  }
  /**
   * A floating-point number.
   */
  export interface ValueFloat {
    tag: 'float',
    val: number,
  }
  /**
   * True or false.
   */
  export interface ValueBoolean {
    tag: 'boolean',
    val: boolean,
  }
  /**
   * A named value a transform attaches to an event (`utm_source`,
   * `ip_anonymized`, ...). Keys are unique within an event; the host
   * stores the attributes as a JSON object.
   */
  export interface Attribute {
    /**
     * The name, at most 128 bytes.
     */
    key: string,
    /**
     * The value.
     */
    value: Value,
  }
  /**
   * Class of device a user agent belongs to.
   * # Variants
   * 
   * ## `"desktop"`
   * 
   * A desktop or laptop computer.
   * ## `"mobile"`
   * 
   * A phone.
   * ## `"tablet"`
   * 
   * A tablet.
   * ## `"bot"`
   * 
   * A crawler, monitor or other automated client.
   * ## `"unknown"`
   * 
   * Anything that could not be classified.
   */
  export type DeviceClass = 'desktop' | 'mobile' | 'tablet' | 'bot' | 'unknown';
  /**
   * A click as it moves through the chain: the fields the host decoded,
   * what earlier transforms derived, and user attributes. The host owns
   * `event-id`, `user-id` and `timestamp-ms`: whatever a transform returns
   * for them, the decoded values are stored.
   */
  export interface Event {
    /**
     * Unique id of the event: the record's `event_id`, or one the host
     * derived from topic, partition and offset so redeliveries map to it.
     */
    eventId: string,
    /**
     * Id of the user who clicked.
     */
    userId: string,
    /**
     * Event time in milliseconds since the Unix epoch (UTC).
     */
    timestampMs: bigint,
    /**
     * The page that was viewed, as sent by the tracker.
     */
    url: string,
    /**
     * Client IP address (IPv4 or IPv6 text form), possibly invalid or empty.
     */
    ip: string,
    /**
     * The client's `User-Agent` header, possibly empty.
     */
    userAgent: string,
    /**
     * The referring page, when the tracker sent one.
     */
    referrer?: string,
    /**
     * The tracker's session id, when it sent one.
     */
    sessionId?: string,
    /**
     * ISO 3166-1 alpha-2 country code, once a transform set it.
     */
    country?: string,
    /**
     * City name, once a transform set it.
     */
    city?: string,
    /**
     * Browser family (e.g. `Chrome`), once a transform set it.
     */
    browser?: string,
    /**
     * Operating system (e.g. `Windows 10`), once a transform set it.
     */
    os?: string,
    /**
     * Device class, once a transform set it.
     */
    device?: DeviceClass,
    /**
     * User attributes, in the order they were added.
     */
    attributes: Array<Attribute>,
  }
  /**
   * Why a transform refused an event: the host dead-letters it with this
   * reason (stage `transform`, kind `rejected`); the rest of the batch is
   * unaffected.
   */
  export interface Rejection {
    /**
     * The field at fault, when one is (e.g. `user_id`).
     */
    field?: string,
    /**
     * Human-readable reason, shown in the dead-letter list.
     */
    reason: string,
  }
  /**
   * What a transform did with one event.
   */
  export type Outcome = OutcomeKeep | OutcomeDrop | OutcomeReject;
  /**
   * Keep the event (as returned, possibly modified) and pass it on.
   */
  export interface OutcomeKeep {
    tag: 'keep',
    val: Event,
  }
  /**
   * Drop it on purpose (filtering): not stored, not an error; the
   * reason is counted per transform.
   */
  export interface OutcomeDrop {
    tag: 'drop',
    val: string,
  }
  /**
   * Refuse it as invalid: dead-lettered with the reason.
   */
  export interface OutcomeReject {
    tag: 'reject',
    val: Rejection,
  }
}
