declare module 'clickstream:pipeline/log@0.2.0' {
  /**
   * Writes one message (at most 1 KiB is kept).
   */
  export function log(level: Level, message: string): void;
  /**
   * How important a message is.
   * # Variants
   * 
   * ## `"debug"`
   * 
   * Detail for debugging a plugin.
   * ## `"info"`
   * 
   * Normal operation worth noting.
   * ## `"warn"`
   * 
   * Something unexpected that the plugin handled.
   * ## `"error"`
   * 
   * Something the plugin could not handle.
   */
  export type Level = 'debug' | 'info' | 'warn' | 'error';
}
