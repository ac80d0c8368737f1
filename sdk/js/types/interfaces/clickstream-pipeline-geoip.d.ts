declare module 'clickstream:pipeline/geoip@0.2.0' {
  /**
   * Looks up many IP addresses (text form) in one call: one answer per
   * address, in order; `none` for an invalid, private or loopback
   * address, or one no database holds. One call per batch keeps the
   * boundary crossings to one.
   */
  export function lookupBatch(ips: Array<string>): Array<Location | undefined>;
  /**
   * Where an IP address is.
   */
  export interface Location {
    /**
     * ISO 3166-1 alpha-2 country code, when known.
     */
    country?: string,
    /**
     * City name (English), when known.
     */
    city?: string,
  }
}
