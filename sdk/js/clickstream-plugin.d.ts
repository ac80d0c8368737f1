// Types of clickstream-plugin.js: the contract's types as the helpers give
// them to `transform` (whatever the engine), and the helpers. The contract
// itself, as jco sees it (BigInt s64s, `undefined` options), is in
// types/ (generated from the WIT by `jco guest-types`).

import type { DeviceClass } from 'clickstream:pipeline/types@0.2.0';

/** An attribute's value. An `int` is a Number, a BigInt past 2^53; either is taken back. */
export type Value =
  | { tag: 'str'; val: string }
  | { tag: 'int'; val: number | bigint }
  | { tag: 'float'; val: number }
  | { tag: 'boolean'; val: boolean };

/** A named value attached to an event; keys are unique within an event. */
export interface Attribute {
  key: string;
  value: Value;
}

/** An event: a missing option is `null` (`undefined` is taken back as none). */
export interface Event {
  eventId: string;
  userId: string;
  /** Milliseconds since the Unix epoch (owned by the host: a change is not stored). */
  timestampMs: number;
  url: string;
  ip: string;
  userAgent: string;
  referrer?: string | null;
  sessionId?: string | null;
  country?: string | null;
  city?: string | null;
  browser?: string | null;
  os?: string | null;
  device?: DeviceClass | null;
  attributes: Attribute[];
}

export type Outcome =
  | { tag: 'keep'; val: Event }
  | { tag: 'drop'; val: string }
  | { tag: 'reject'; val: { field?: string | null; reason: string } };

/** A setting's default, whose type says how its text is read. */
export type SettingDefault = string | number | bigint | boolean | string[] | null;

/** A setting with its own reader: `parse` throws a message to refuse the text. */
export interface SettingSpec<T> {
  default: T;
  parse?: (text: string, key: string) => T;
}

/** The settings `transform` gets for the declared `settings`. */
export type Settings<S> = {
  [K in keyof S]: S[K] extends SettingSpec<infer T>
    ? T
    : S[K] extends string[]
      ? string[]
      : S[K] extends null
        ? string | null
        : S[K] extends number
          ? number
          : S[K] extends boolean
            ? boolean
            : S[K] extends string
              ? string
              : S[K];
};

export interface Definition<S, T> {
  name: string;
  version: string;
  /** The keys pipeline.toml's `settings` table may have, each with its default. */
  settings?: S;
  /** Called once with the settings before any batch; throw to refuse them; a returned value replaces them. */
  init?: (settings: Settings<S>) => T | void;
  /** One outcome per event, in order. */
  transform: (batch: Event[], settings: T) => Outcome[];
}

/** The four exports of the `transformer` world. */
export interface Transformer {
  name(): string;
  version(): string;
  configure(settings: Array<[string, string]>): void;
  transform(batch: Event[]): Outcome[];
}

export function defineTransformer<S extends Record<string, SettingDefault | SettingSpec<unknown>> = {}, T = Settings<S>>(
  definition: Definition<S, T>,
): Transformer;

/** Keep the event (as modified) and pass it on. */
export function keep(event: Event): Outcome;
/** Drop the event on purpose; the reason is counted. */
export function drop(reason: string): Outcome;
/** Refuse the event as invalid: dead-lettered as `field: reason`. */
export function reject(field: string | null, reason: string): Outcome;
/** Refuse the event as invalid, blaming no field. */
export function reject(reason: string): Outcome;
/** Sets attribute `key`, replacing its value in place if the event has it; returns the event. */
export function setAttribute(event: Event, key: string, value: string | number | bigint | boolean | Value): Event;
/** The value of attribute `key`, or `null`. */
export function getAttribute(event: Event, key: string): string | number | bigint | boolean | null;
/** Removes attribute `key`; its value, or `null`. */
export function removeAttribute(event: Event, key: string): string | number | bigint | boolean | null;
