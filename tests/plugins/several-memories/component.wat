;; A test-only transform (contract 0.2.0) written by hand: two core modules,
;; each with a 160 MiB linear memory. Either memory alone is under the
;; default cap of 256 MiB; together they are 320 MiB, which the host must
;; refuse when it instantiates the component. The functions are the
;; smallest the contract allows (the component never gets to run them).
(component
  (import "clickstream:pipeline/types@0.2.0" (instance $types
    (type $value (variant (case "str" string) (case "int" s64) (case "float" f64) (case "boolean" bool)))
    (export "value" (type $value' (eq $value)))
    (type $attribute (record (field "key" string) (field "value" $value')))
    (export "attribute" (type $attribute' (eq $attribute)))
    (type $device (enum "desktop" "mobile" "tablet" "bot" "unknown"))
    (export "device-class" (type $device' (eq $device)))
    (type $event (record
      (field "event-id" string) (field "user-id" string) (field "timestamp-ms" s64)
      (field "url" string) (field "ip" string) (field "user-agent" string)
      (field "referrer" (option string)) (field "session-id" (option string))
      (field "country" (option string)) (field "city" (option string))
      (field "browser" (option string)) (field "os" (option string))
      (field "device" (option $device')) (field "attributes" (list $attribute'))))
    (export "event" (type $event' (eq $event)))
    (type $rejection (record (field "field" (option string)) (field "reason" string)))
    (export "rejection" (type $rejection' (eq $rejection)))
    (type $outcome (variant (case "keep" $event') (case "drop" string) (case "reject" $rejection')))
    (export "outcome" (type $outcome' (eq $outcome)))
  ))
  (alias export $types "event" (type $event))
  (alias export $types "outcome" (type $outcome))

  (core module $main
    ;; 2560 pages of 64 KiB: 160 MiB.
    (memory (export "memory") 2560)
    (global $next (mut i32) (i32.const 4096))
    (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
      (local $at i32)
      (local.set $at (global.get $next))
      (global.set $next (i32.add (global.get $next) (local.get 3)))
      (local.get $at))
    (data (i32.const 64) "several-memories0.0.1")
    ;; Each function answers through the return area at 0.
    (func (export "name") (result i32)
      (i32.store (i32.const 0) (i32.const 64))
      (i32.store (i32.const 4) (i32.const 16))
      (i32.const 0))
    (func (export "version") (result i32)
      (i32.store (i32.const 0) (i32.const 80))
      (i32.store (i32.const 4) (i32.const 5))
      (i32.const 0))
    (func (export "configure") (param i32 i32) (result i32)
      (i32.store8 (i32.const 0) (i32.const 0))
      (i32.const 0))
    (func (export "transform") (param i32 i32) (result i32)
      (i32.store (i32.const 0) (i32.const 0))
      (i32.store (i32.const 4) (i32.const 0))
      (i32.const 0)))
  (core module $hoard
    (memory (export "memory") 2560))

  (core instance $main (instantiate $main))
  (core instance $hoard (instantiate $hoard))
  (alias core export $main "memory" (core memory $memory))
  (alias core export $main "cabi_realloc" (core func $realloc))

  (func (export "name") (result string)
    (canon lift (core func $main "name") (memory $memory)))
  (func (export "version") (result string)
    (canon lift (core func $main "version") (memory $memory)))
  (func (export "configure") (param "settings" (list (tuple string string))) (result (result (error string)))
    (canon lift (core func $main "configure") (memory $memory) (realloc $realloc)))
  (func (export "transform") (param "batch" (list $event)) (result (list $outcome))
    (canon lift (core func $main "transform") (memory $memory) (realloc $realloc)))
)
