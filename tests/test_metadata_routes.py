"""The metadata routes answer real data, paginate and validate."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
import referencing

import ipm
from ipm import schemas
from ipm.domain.errors import InvalidRequest, NotFound
from ipm.domain.lifecycle import LIFECYCLES_VERSION, WEBHOOK
from tests.conftest import ORG, Caller
from tests.test_schemas import _refs, _resolve


def _all_pages(call: Caller, path: str, body: dict[str, Any], field: str) -> list[Any]:
    items: list[Any] = []
    token = None
    while True:
        status, answer = call(path, {**body, "next_token": token})
        assert status == 200, answer
        items += answer["data"][field]
        token = answer["data"]["next_token"]
        if token is None:
            return items


def test_pagination_conventions(call: Caller) -> None:
    """pagination/get states the default, the clamp and the token rules."""
    _, body = call("/pagination/get", {})

    data = body["data"]
    assert (data["default_limit"], data["min_limit"], data["max_limit"]) == (8, 1, 256)
    assert "/cdc/list" in data["routes"]


def test_every_pagination_field_is_in_the_served_schema(call: Caller) -> None:
    """Each field pagination/get sends is a property of its schema, the
    token's too (field and last_page were once sent but not described)."""
    _, body = call("/pagination/get", {})
    schema = schemas.get("PaginationGetResponse")

    data = body["data"]
    assert set(data) <= set(schema["properties"])
    assert set(data["token"]) <= set(schema["properties"]["token"]["properties"])


def test_lifecycles_are_the_enforced_ones(call: Caller) -> None:
    """lifecycle/list serves the definitions the use-cases enforce, with a version."""
    status, body = call("/lifecycle/list", {"name": "webhook"})

    assert status == 200
    assert body["data"]["version"] == LIFECYCLES_VERSION
    assert body["data"]["items"] == [WEBHOOK.to_wire()]


def test_lifecycles_page_with_a_limit_of_one(call: Caller) -> None:
    """Paging one by one returns every lifecycle exactly once."""
    names = [
        lc["name"] for lc in _all_pages(call, "/lifecycle/list", {"limit": 1}, "items")
    ]

    assert names == sorted(names)
    assert set(names) == {"bulk_import_job", "bulk_export_job", "webhook"}


def test_catalog_lists_own_and_host_events(call: Caller, app: ipm.Application) -> None:
    """The catalog holds ipm's event types and those the host registers."""
    app.register_event_type(
        "pos", "sale.created", {"type": "object", "required": ["total_minor"]}
    )

    items = _all_pages(call, "/event/catalog/list", {"limit": 3}, "items")

    keys = {(i["service"], i["action"]) for i in items}
    assert ("pos", "sale.created") in keys
    assert any(service == "ipm" for service, _ in keys)
    assert all(i["schema_url"].startswith("http") for i in items)


def test_the_served_openapi_holds_the_host_s_event_types(
    call: Caller, app: ipm.Application
) -> None:
    """Regression: the catalog's schema_url named a host type's schema that
    /openapi.json (every schema under components, wire.md) did not hold."""
    schema = {"type": "object", "required": ["total_minor"]}
    app.register_event_type("pos", "sale.created", schema)
    _, body = call("/event/catalog/list", {"service": "pos"})
    url = body["data"]["items"][0]["schema_url"]
    name = url.rsplit("/", 1)[-1].removesuffix(".json")

    document = app.handle("GET", "/openapi.json", {}, b"").json()
    served = app.handle("GET", f"/schemas/{name}.json", {}, b"").json()

    component = document["components"]["schemas"][name]
    assert component == {k: v for k, v in served.items() if k not in ("$schema", "$id")}
    assert component["required"] == ["total_minor"]


def test_a_host_schema_s_references_resolve_in_the_openapi(
    app: ipm.Application,
) -> None:
    """Regression: moving a host type into components rewrote an anchor
    reference (#money) as a pointer to nothing, a $ref inside an example
    (which is data), and, once examples were skipped, no longer rewrote
    the references under properties named like a keyword (default)."""
    schema = {
        "type": "object",
        "properties": {
            "total": {"$ref": "#money"},
            "default": {"$ref": "#/$defs/m"},
            "examples": {"$ref": "#/$defs/m"},
        },
        "$defs": {"m": {"$anchor": "money", "type": "integer"}},
        "examples": [{"$ref": "#/not/a/schema"}],
    }
    app.register_event_type("pos", "sale.created", schema)
    app.register_event_type("pos", "sale.voided", schema)  # the same anchor

    document = app.handle("GET", "/openapi.json", {}, b"").json()

    name = next(n for n in document["components"]["schemas"] if "sale.created" in n)
    component = document["components"]["schemas"][name]
    m = {"$ref": f"#/components/schemas/{name}/$defs/m"}
    assert component["properties"] == {"total": m, "default": m, "examples": m}
    assert "$anchor" not in component["$defs"]["m"]
    assert component["examples"] == [{"$ref": "#/not/a/schema"}]
    refs = [r for r in _refs(document["components"]) if r != "#/not/a/schema"]
    assert refs and all(_resolve(document, ref) is not None for ref in refs)


def test_every_way_a_host_schema_names_itself_resolves_in_the_openapi(
    app: ipm.Application,
) -> None:
    """Regression: a non-string $anchor (data under an unknown keyword)
    made /openapi.json a 500 for good; a reference through the schema's
    own $id, through its URN with a pointer, or to a $dynamicAnchor was
    left pointing at nothing."""
    own_id = "https://schemas.example/thing.json"
    schema = {
        "$id": own_id,
        "type": "object",
        "x-meta": {"$anchor": ["not", "a", "name"]},
        "properties": {
            "a": {"$ref": f"{own_id}#/$defs/t"},
            "c": {"$ref": "#T"},
        },
        "$defs": {"t": {"$dynamicAnchor": "T", "type": "string"}},
    }
    other = {"$ref": "urn:ipm:schema:event.pos.thing.made#/$defs/t"}
    app.register_event_type("pos", "thing.made", schema)
    app.register_event_type("pos", "thing.copied", other)

    answer = app.handle("GET", "/openapi.json", {}, b"")

    assert answer.status == 200
    document = answer.json()
    components = document["components"]["schemas"]
    component = components["event.pos.thing.made"]
    t = {"$ref": "#/components/schemas/event.pos.thing.made/$defs/t"}
    assert component["properties"] == {"a": t, "c": t}
    assert component["x-meta"] == {"$anchor": ["not", "a", "name"]}
    assert components["event.pos.thing.copied"]["$ref"] == t["$ref"]
    refs = _refs(component) + _refs(components["event.pos.thing.copied"])
    assert all(_resolve(document, ref) is not None for ref in refs)


def test_references_between_host_types_and_nested_resources_resolve(
    app: ipm.Application,
) -> None:
    """Regression: a reference to another type's anchor or through its own
    $id (or an $id ending in '#') pointed at nothing; one inside a nested
    $id resource was rewritten to the outer schema's subschema; an anchor
    inside an unknown keyword (data) shadowed the real one."""
    made = {
        "$id": "urn:example:made#",
        "type": "object",
        "x-doc": {"$anchor": "T"},
        "properties": {
            "own": {"$ref": "urn:example:made#/$defs/t"},
            "v": {"$ref": "#/$defs/inner"},
        },
        "$defs": {
            "t": {"$anchor": "T", "type": "string"},
            "n": {"type": "string"},
            "inner": {
                "$id": "urn:example:inner",
                "properties": {"v": {"$ref": "#/$defs/n"}},
                "$defs": {"n": {"type": "integer"}},
            },
        },
    }
    copied = {
        "properties": {
            "by_anchor": {"$ref": "urn:ipm:schema:event.pos.thing.made#T"},
            "by_id": {"$ref": "urn:example:made#/$defs/t"},
        }
    }
    app.register_event_type("pos", "thing.made", made)
    app.register_event_type("pos", "thing.copied", copied)

    document = app.handle("GET", "/openapi.json", {}, b"").json()

    components = document["components"]["schemas"]
    t = {"$ref": "#/components/schemas/event.pos.thing.made/$defs/t"}
    assert components["event.pos.thing.copied"]["properties"] == {
        "by_anchor": t,
        "by_id": t,
    }
    made_there = components["event.pos.thing.made"]
    assert made_there["properties"]["own"] == t
    assert made_there["x-doc"] == {"$anchor": "T"}  # data, as it was
    inner = made_there["$defs"]["inner"]  # a resource: read against itself
    n = "#/components/schemas/event.pos.thing.made/$defs/inner/$defs/n"
    assert "$id" not in inner and inner["properties"]["v"] == {"$ref": n}


def test_a_nested_resource_and_a_repeated_id_resolve_where_ipm_reads_them(
    app: ipm.Application,
) -> None:
    """Regression: references through a nested resource's $id were left
    pointing at nothing once the $id was taken out; two types with one $id
    had the first type's references point into the second."""
    line = {
        "$id": "urn:example:line",
        "properties": {"n": {"$ref": "urn:example:line#/$defs/n"}},
        "$defs": {"n": {"type": "integer"}},
    }
    added = {
        "$id": "urn:example:same",
        "properties": {
            "qty": {"$ref": "urn:example:same#/$defs/qty"},
            "line": {"$ref": "urn:example:line"},
            "n": {"$ref": "urn:example:line#/$defs/n"},
        },
        "$defs": {"qty": {"type": "string"}, "line": line},
    }
    counted = {
        "$id": "urn:example:counted",
        "properties": {"qty": {"$ref": "urn:example:counted#/$defs/qty"}},
        "$defs": {"qty": {"type": "integer"}},
    }
    app.register_event_type("pos", "line.added", added)
    app.register_event_type("pos", "line.counted", counted)

    document = app.handle("GET", "/openapi.json", {}, b"").json()

    components = document["components"]["schemas"]
    home = "#/components/schemas/event.pos.line.added"
    assert components["event.pos.line.added"]["properties"] == {
        "qty": {"$ref": f"{home}/$defs/qty"},
        "line": {"$ref": f"{home}/$defs/line"},
        "n": {"$ref": f"{home}/$defs/line/$defs/n"},
    }
    nested = components["event.pos.line.added"]["$defs"]["line"]
    assert nested["properties"]["n"] == {"$ref": f"{home}/$defs/line/$defs/n"}
    assert components["event.pos.line.counted"]["properties"]["qty"] == {
        "$ref": "#/components/schemas/event.pos.line.counted/$defs/qty"
    }


def test_nested_resources_are_read_against_their_own_type(
    app: ipm.Application,
) -> None:
    """Regression: a relative nested $id ("item") spelled alike in two
    types, or an absolute one both declare, sent one type's reference into
    the other's subschema; an anchor under definitions (the older name of
    $defs) was left pointing at nothing."""
    for action, kind, root in (("a.x", "string", "a"), ("b.x", "integer", "b")):
        app.register_event_type(
            "pos",
            action,
            {
                "$id": f"https://ex.test/{root}/root",
                "properties": {
                    "it": {"$ref": "item"},
                    "same": {"$ref": f"urn:example:same-{root}"},
                    "m": {"$ref": "#money"},
                },
                "$defs": {
                    "item": {"$id": "item", "type": kind},
                    "same": {"$id": f"urn:example:same-{root}", "type": kind},
                },
                "definitions": {"m": {"$anchor": "money", "type": kind}},
            },
        )

    document = app.handle("GET", "/openapi.json", {}, b"").json()

    for action in ("a.x", "b.x"):
        home = f"#/components/schemas/event.pos.{action}"
        assert document["components"]["schemas"][f"event.pos.{action}"][
            "properties"
        ] == {
            "it": {"$ref": f"{home}/$defs/item"},
            "same": {"$ref": f"{home}/$defs/same"},
            "m": {"$ref": f"{home}/definitions/m"},
        }


def test_ipm_event_types_carry_their_op(call: Caller) -> None:
    """ipm's own types say their op; null only where it varies."""
    _, body = call("/event/catalog/list", {"service": "ipm", "limit": 100})

    ops = {i["action"]: i["op"] for i in body["data"]["items"]}
    assert ops["webhook.created"] == "c"
    assert ops["bulk.job.created"] == "c"
    assert ops["bulk.job.finished"] == "u"
    assert ops["webhook.disabled"] == "u"
    assert ops["kpi.recorded"] is None and ops["kpi.alert.emitted"] is None
    assert sum(op is None for op in ops.values()) == 2


def test_catalog_filters(call: Caller, app: ipm.Application) -> None:
    """service, action and action_prefix narrow the catalog."""
    app.register_event_type("pos", "sale.created", {"type": "object"})
    app.register_event_type("pos", "sale.voided", {"type": "object"})
    app.register_event_type("orders", "order.placed", {"type": "object"})

    _, body = call("/event/catalog/list", {"service": "pos", "action_prefix": "sale.v"})

    assert [i["action"] for i in body["data"]["items"]] == ["sale.voided"]


def test_schema_url_serves_the_schema(call: Caller, app: ipm.Application) -> None:
    """A catalog entry's schema_url serves its JSON Schema."""
    schema = {"type": "object", "required": ["total_minor"]}
    app.register_event_type("pos", "sale.created", schema)
    _, body = call("/event/catalog/list", {"service": "pos"})
    url = body["data"]["items"][0]["schema_url"]

    response = app.handle("GET", url.split("localhost", 1)[1], {}, b"")

    assert response.status == 200
    served = response.json()
    assert served["required"] == ["total_minor"]
    assert served["$schema"].endswith("2020-12/schema")


def test_export_contracts_follow_the_catalog(
    call: Caller, app: ipm.Application
) -> None:
    """Each service of the catalog has one export contract listing its actions."""
    app.register_event_type("pos", "sale.created", {"type": "object"})

    contracts = _all_pages(call, "/export/contract/list", {"limit": 1}, "contracts")

    pos = next(c for c in contracts if c["service"] == "pos")
    assert pos["format"] == "ndjson"
    assert [a["action"] for a in pos["actions"]] == ["sale.created"]


def test_specimens_by_name_and_unknown(call: Caller) -> None:
    """specimen/get returns a named specimen; an unknown name is 404."""
    name = schemas.specimen_names()[0]

    status, body = call("/specimen/get", {"name": name})
    assert status == 200
    assert body["data"] == {
        "name": name,
        "specimen": schemas.specimen(name),
        "specimens": {name: schemas.specimen(name)},
    }

    status, body = call("/specimen/get", {"name": "NoSuch"})
    assert (status, body["error"]["code"]) == (404, "not_found")


def test_specimens_without_a_name_come_in_the_reference_s_shape(
    call: Caller,
) -> None:
    """Without a name: every specimen, and name and specimen present as null.

    The API reference's sample answer carries name, specimen and specimens
    together; ipm once answered specimens alone.
    """
    status, body = call("/specimen/get", {})

    assert status == 200
    assert body["data"]["name"] is None and body["data"]["specimen"] is None
    assert set(body["data"]["specimens"]) == set(schemas.specimen_names())


def test_tampered_token_is_invalid(call: Caller) -> None:
    """An altered next_token is a 400 invalid_token, never a wrong page."""
    _, first = call("/lifecycle/list", {"limit": 1})
    token = dict(first["data"]["next_token"])
    token["k"] = ["zzz"]

    status, body = call("/lifecycle/list", {"limit": 1, "next_token": token})

    assert status == 400
    assert body["error"]["code"] == "invalid_token"


def test_token_replayed_with_other_filters_is_invalid(call: Caller) -> None:
    """A token used with other filters than it was issued for is a 400."""
    _, first = call("/lifecycle/list", {"limit": 1})
    token = first["data"]["next_token"]

    status, body = call(
        "/lifecycle/list", {"limit": 1, "service": "ipm", "next_token": token}
    )

    assert (status, body["error"]["code"]) == (400, "invalid_token")


def test_garbage_tokens_are_invalid(call: Caller) -> None:
    """Tokens of the wrong shape are 400s, not 500s."""
    for token in (
        {"v": 1, "k": 3, "s": "x"},
        {"v": 2, "k": [], "s": "x"},
        {"a": 1},
    ):
        status, body = call("/lifecycle/list", {"next_token": token})
        assert (status, body["error"]["code"]) == (400, "invalid_token"), token


def test_an_empty_token_object_means_the_first_page(call: Caller) -> None:
    """next_token {} (as in the API reference's samples) starts at the beginning."""
    _, first = call("/lifecycle/list", {"limit": 1})

    status, again = call("/lifecycle/list", {"limit": 1, "next_token": {}})

    assert status == 200
    assert again["data"]["items"] == first["data"]["items"]


def test_limit_is_clamped(call: Caller) -> None:
    """A limit outside 1-256 is clamped, not refused."""
    assert call("/lifecycle/list", {"limit": 0})[0] == 200
    _, body = call("/lifecycle/list", {"limit": 10_000})
    assert len(body["data"]["items"]) == 3


def test_openapi_document_is_served_as_yaml_too(app: ipm.Application) -> None:
    """The API reference names /openapi.yaml: the same document (JSON is
    YAML 1.2), under YAML's media type."""
    as_json = app.handle("GET", "/openapi.json", {}, b"")
    as_yaml = app.handle("GET", "/openapi.yaml", {}, b"")

    assert as_yaml.status == 200
    assert as_yaml.header("content-type") == "application/yaml"
    assert as_yaml.json() == as_json.json()
    assert "/openapi.yaml" in as_json.json()["paths"]
    assert app.handle("GET", "/openapi.yml", {}, b"").status == 404


def test_openapi_document_is_served(app: ipm.Application) -> None:
    """GET /openapi.json serves an OpenAPI 3.1 document with every route."""
    response = app.handle("GET", "/openapi.json", {}, b"")

    document = response.json()
    assert document["openapi"].startswith("3.1")
    assert "/kpi/record" in document["paths"]
    assert "get" in document["paths"]["/stat"]


def _standalone(document: dict[str, Any]) -> Any:
    """A validator that can fetch nothing: every $ref must resolve inside."""
    return jsonschema.Draft202012Validator(document, registry=referencing.Registry())


@pytest.mark.parametrize("name", schemas.specimen_names())
def test_a_served_schema_validates_alone(app: ipm.Application, name: str) -> None:
    """Regression: /schemas/event.ipm.bulk.job.created.json was only a $ref
    to urn:ipm:schema:Job, which no URL serves: an integrator's validator
    raised Unresolvable. Each served schema now holds what it refers to."""
    schema = schemas.schema_of_specimen(name)
    served = app.handle("GET", f"/schemas/{schema}.json", {}, b"").json()

    assert list(_standalone(served).iter_errors(schemas.specimen(name))) == []


@pytest.mark.parametrize(
    "name", [n for n in schemas.specimen_names() if n.split(".")[0] == "Event"]
)
def test_a_served_event_schema_checks_the_payload_alone(
    app: ipm.Application, name: str
) -> None:
    event = schemas.specimen(name)
    if event["service"] != "ipm":
        pytest.skip("a host event; its payload schema belongs to the host")
    served = app.handle(
        "GET", f"/schemas/event.ipm.{event['action']}.json", {}, b""
    ).json()

    assert list(_standalone(served).iter_errors(event["payload"])) == []
    # The embedded schemas check, not only resolve.
    assert list(_standalone(served).iter_errors({**event["payload"], "revision": 5}))


_U = "urn:ipm:schema:event.shop."
_SHOP = "https://shop.example/"
_BUNDLE_CASES: dict[str, tuple[list[tuple[str, Any]], list[tuple[str, Any]]]] = {
    "a plain URN": (
        [
            ("a", {"type": "object", "properties": {"b": {"$ref": _U + "b"}}}),
            ("b", {"type": "integer"}),
        ],
        [("a", {"b": 1}), ("a", {"b": "x"})],
    ),
    "a pointer into a type with an $id of its own": (
        [
            ("a", {"$ref": _U + "b#/$defs/p"}),
            ("b", {"$id": _SHOP + "b.json", "$defs": {"p": {"minimum": 0}}}),
        ],
        [("a", 1), ("a", -1)],
    ),
    "an anchor in a type with an $id of its own": (
        [
            ("a", {"$ref": _U + "b#pos"}),
            (
                "b",
                {
                    "$id": _SHOP + "b.json",
                    "$defs": {"p": {"$anchor": "pos", "minimum": 0}},
                },
            ),
        ],
        [("a", 1), ("a", -1)],
    ),
    "its own URN from a type with an $id of its own": (
        [
            (
                "a",
                {
                    "$id": _SHOP + "a.json",
                    "type": "object",
                    "properties": {"n": {"$ref": _U + "a"}, "v": {"type": "integer"}},
                },
            ),
        ],
        [("a", {"n": {"v": 1}}), ("a", {"n": {"v": "x"}})],
    ),
    "another type by its own $id": (
        [
            ("a", {"properties": {"b": {"$ref": _SHOP + "b.json"}}}),
            ("b", {"$id": _SHOP + "b.json", "type": "integer"}),
        ],
        [("a", {"b": 1}), ("a", {"b": "x"})],
    ),
    "two types referring to each other": (
        [
            (
                "a",
                {
                    "$id": _SHOP + "a.json",
                    "properties": {"b": {"$ref": _U + "b"}, "v": {"type": "integer"}},
                },
            ),
            ("b", {"properties": {"a": {"$ref": _U + "a"}}}),
        ],
        [("a", {"b": {"a": {"v": 1}}}), ("a", {"b": {"a": {"v": "x"}}})],
    ),
    "a dynamic reference by URN": (
        [
            ("a", {"$dynamicRef": _U + "b#node"}),
            ("b", {"$dynamicAnchor": "node", "type": "integer"}),
        ],
        [("a", 1), ("a", "x")],
    ),
    "a dynamic anchor extended": (
        [
            (
                "tree",
                {
                    "$dynamicAnchor": "node",
                    "type": "object",
                    "properties": {
                        "kids": {"type": "array", "items": {"$dynamicRef": "#node"}}
                    },
                },
            ),
            (
                "strict",
                {
                    "$ref": _U + "tree",
                    "$dynamicAnchor": "node",
                    "unevaluatedProperties": False,
                    "properties": {"kids": True, "v": {"type": "integer"}},
                },
            ),
        ],
        [("strict", {"kids": [{"v": 1}]}), ("strict", {"kids": [{"x": 1}]})],
    ),
    "a resource nested in another type, by its id": (
        [
            ("a", {"properties": {"x": {"$ref": _SHOP + "x.json"}}}),
            ("b", {"$defs": {"x": {"$id": _SHOP + "x.json", "type": "integer"}}}),
        ],
        [("a", {"x": 1}), ("a", {"x": "s"})],
    ),
    "a reference in an unknown keyword, reached by a pointer": (
        [
            ("a", {"$ref": "#/x-lib/inner", "x-lib": {"inner": {"$ref": _U + "b"}}}),
            ("b", {"type": "integer"}),
        ],
        [("a", 1), ("a", "s")],
    ),
    "a relative reference with a colon in its query": (
        [
            ("a", {"$id": _SHOP + "a.json", "$ref": "b.json?v=1:2"}),
            ("b", {"$id": _SHOP + "b.json?v=1:2", "type": "integer"}),
        ],
        [("a", 1), ("a", "s")],
    ),
    "an ipm schema with a pointer": (
        [
            (
                "a",
                {
                    "properties": {
                        "s": {"$ref": "urn:ipm:schema:Job#/properties/status"}
                    }
                },
            )
        ],
        [("a", {"s": "completed"}), ("a", {"s": 5})],
    ),
}


@pytest.mark.parametrize("case", sorted(_BUNDLE_CASES))
def test_a_served_host_schema_judges_as_ipm_does(
    app: ipm.Application, case: str
) -> None:
    """Regression: references to a host type with an $id of its own (by
    URN with a pointer or an anchor, by that $id, to itself) and dynamic
    references were left unresolvable in the served document."""
    types, instances = _BUNDLE_CASES[case]
    app.catalog.register_all(
        [{"service": "shop", "action": a, "schema": schema} for a, schema in types]
    )
    verdicts = []
    for action, instance in instances:
        name = f"event.shop.{action}"
        answer = app.handle("GET", f"/schemas/{name}.json", {}, b"")
        assert answer.status == 200, answer.body[:300]
        alone = _standalone(answer.json()).is_valid(instance)
        verdicts.append(alone)
        assert alone == app.catalog._schemas.is_valid(name, instance), instance

    assert True in verdicts and False in verdicts


def test_typed_metadata_is_what_the_routes_serve(
    app: ipm.Application, call: Caller
) -> None:
    """DESIGN: one typed method per use-case, metadata included; the routes
    serve the same data, filtered alike."""
    app.register_event_type("pos", "sale.created", {"type": "object"})

    _, lifecycles = call("/lifecycle/list", {"name": "webhook", "limit": 256})
    _, catalog = call("/event/catalog/list", {"service": "pos", "limit": 256})
    _, contracts = call("/export/contract/list", {"service": "pos"})
    _, paging = call("/pagination/get", {})
    _, specimen = call("/specimen/get", {"name": "Job"})

    typed = app.metadata
    assert [lc.to_wire() for lc in typed.lifecycles(name="webhook")] == (
        lifecycles["data"]["items"]
    )
    assert typed.version == lifecycles["data"]["version"]
    assert [(e.service, e.action) for e in typed.catalog(service="pos")] == [
        (i["service"], i["action"]) for i in catalog["data"]["items"]
    ]
    (contract,) = typed.export_contracts(service="pos")
    assert [e.action for e in contract.entries] == [
        a["action"] for a in contracts["data"]["contracts"][0]["actions"]
    ]
    assert typed.pagination().max_limit == paging["data"]["max_limit"]
    assert typed.specimen("Job") == specimen["data"]["specimen"]
    assert set(typed.specimens()) == set(schemas.specimen_names())


def test_typed_metadata_refuses_what_the_routes_refuse(app: ipm.Application) -> None:
    with pytest.raises(InvalidRequest):
        app.metadata.catalog(service="no such\nservice")
    with pytest.raises(NotFound):
        app.metadata.specimen("NoSuchSpecimen")
    assert app.metadata.lifecycles(service="nothing") == []


def test_a_schema_the_compiled_validator_fails_on_is_refused(
    app: ipm.Application,
) -> None:
    """Regression: two types referring to each other, one through an anchor
    of a type with its own $id, made jsonschema-rs panic: a PanicException
    (a BaseException) went through registration and ended ipm serve. It is
    an InvalidRequest naming the schema, nothing registered."""
    anchored = {"p": {"$anchor": "anc", "type": "integer"}}
    types = [
        (
            "b",
            {
                "$id": _SHOP + "b.json",
                "$defs": anchored,
                "properties": {"y": {"$ref": _U + "a"}},
            },
        ),
        ("a", {"$id": _SHOP + "a.json", "properties": {"x": {"$ref": _U + "b#anc"}}}),
    ]

    with pytest.raises(InvalidRequest):
        app.catalog.register_all(
            [{"service": "shop", "action": a, "schema": s} for a, s in types]
        )

    assert app.metadata.catalog(service="shop") == []


@pytest.mark.parametrize(
    "types",
    [
        [("a", {"$id": _SHOP + "d.json"}), ("b", {"$id": _SHOP + "d.json"})],
        [
            ("a", {"$defs": {"m": {"$id": _SHOP + "b.json"}}}),
            ("b", {"$id": _SHOP + "b.json"}),
        ],
        [
            ("a", {"$defs": {"m": {"$id": _SHOP + "m.json"}}}),
            ("b", {"$defs": {"m": {"$id": _SHOP + "m.json"}}}),
        ],
        [("a", {"$id": _SHOP + "a.json", "$defs": {"m": {"$id": _SHOP + "a.json"}}})],
    ],
)
def test_an_id_claimed_twice_is_refused(
    app: ipm.Application, types: list[tuple[str, Any]]
) -> None:
    """Regression: two host types (or resources nested in them) with one
    $id were taken; a reference to it meant whichever the validator found
    first, so ipm judged a payload by the other type's schema, and the
    served schema judged otherwise than ipm."""
    with pytest.raises(InvalidRequest, match="already the id of"):
        app.catalog.register_all(
            [{"service": "shop", "action": a, "schema": s} for a, s in types]
        )
    if len(types) == 2:  # one at a time, too
        (first, one), (second, other) = types
        app.register_event_type("shop", first, one)
        with pytest.raises(InvalidRequest, match="already the id of"):
            app.register_event_type("shop", second, other)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": ["object", "integer"], "properties": {"x": {"$ref": ""}}},
        {"properties": {"x": {"$ref": "URN:ipm:schema:Job"}}},
        {"properties": {"x": {"$dynamicRef": ""}}},
    ],
)
def test_a_reference_the_validators_read_apart_is_refused(
    app: ipm.Application, schema: dict[str, Any]
) -> None:
    """Regression: "$ref": "" was ignored by the compiled validator, so a
    payload breaking the schema was stored; an upper-case URN was found by
    the compiled validator only, and publishing raised the reference
    validator's own error instead of an IpmError."""
    with pytest.raises(InvalidRequest):
        app.register_event_type("shop", "odd", schema)
    assert app.metadata.catalog(service="shop") == []


@pytest.mark.parametrize(
    "schema",
    [
        {"$id": "rel/x.json", "type": "object"},
        {"$id": "URN:ipm:schema:Job", "type": "string"},
        {"$id": "https://SHOP.example/s/x"},
        {"$defs": {"m": {"$id": "https://shop.example/s/./x"}}},
        {"properties": {"x": {"$ref": "https://shop.example/s/%78"}}},
    ],
)
def test_an_id_or_reference_the_validators_read_apart_is_refused(
    app: ipm.Application, schema: dict[str, Any]
) -> None:
    """Regression: a relative top-level $id broke every later host type (a
    500 on publish); an upper-case ipm URN as $id took over Job in the
    compiled validator; ids spelt otherwise than the compiled validator
    reads them were two ids to one validator and one to the other."""
    with pytest.raises(InvalidRequest):
        app.register_event_type("shop", "odd", schema)
    app.register_event_type("shop", "plain", {"type": "object"})
    assert app.publish(ORG, {"service": "shop", "action": "plain", "payload": {}})


def test_ids_in_a_host_s_annotation_data_are_not_claims(app: ipm.Application) -> None:
    """Regression: an $id inside an unknown keyword's data (an example of
    the host's) was taken for a resource, so two alike were refused."""
    sample = {"x-sample": {"$id": _SHOP + "orders/1", "$ref": ""}}
    app.register_event_type("shop", "a", {"type": "object", **sample})
    app.register_event_type("shop", "b", {"type": "object", **sample})

    assert len(app.metadata.catalog(service="shop")) == 2
