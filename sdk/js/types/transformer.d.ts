/// <reference path="./interfaces/clickstream-pipeline-geoip.d.ts" />
/// <reference path="./interfaces/clickstream-pipeline-log.d.ts" />
/// <reference path="./interfaces/clickstream-pipeline-types.d.ts" />
declare module 'clickstream:pipeline/transformer@0.2.0' {
  export type Event = import('clickstream:pipeline/types@0.2.0').Event;
  export type Outcome = import('clickstream:pipeline/types@0.2.0').Outcome;
  export type * as ClickstreamPipelineGeoip020 from 'clickstream:pipeline/geoip@0.2.0'; // import clickstream:pipeline/geoip@0.2.0
  export type * as ClickstreamPipelineLog020 from 'clickstream:pipeline/log@0.2.0'; // import clickstream:pipeline/log@0.2.0
  export type * as ClickstreamPipelineTypes020 from 'clickstream:pipeline/types@0.2.0'; // import clickstream:pipeline/types@0.2.0
  /**
  * The plugin's name, e.g. `enrich`; with the version, recorded in the
  * chain that produced each stored event.
  */
  export function name(): string;
  /**
  * The plugin's version, e.g. `0.2.0`.
  */
  export function version(): string;
  /**
  * Applies the transform's `settings` table from pipeline.toml.
  * Called once per instance before any batch; an error rejects the plugin.
  */
  export function configure(settings: Array<[string, string]>): void;
  /**
  * Transforms a batch: exactly one outcome per input, in input order.
  */
  export function transform(batch: Array<Event>): Array<Outcome>;
  export type Result<T, E> = { tag: 'ok', val: T } | { tag: 'err', val: E };
}
