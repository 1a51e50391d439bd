"""Fifty (prompt, JSON schema) cases for structured-output validity runs: ten everyday schemas
(flat and nested objects, arrays, enums, ranges, patterns, optional fields, anyOf) with five
prompts each. Used by benchmarks/structured_output.py and the tests."""

from __future__ import annotations

from typing import Any

_STR = {"type": "string"}
_INT = {"type": "integer"}

SCHEMAS: dict[str, dict[str, Any]] = {
    "person": {"type": "object", "properties": {"name": _STR, "age": {"type": "integer", "minimum": 0, "maximum": 150},
                                                "email": _STR},
               "required": ["name", "age"], "additionalProperties": False},
    "address": {"type": "object", "properties": {
        "street": _STR, "city": _STR, "postal_code": {"type": "string", "pattern": "^[0-9]{5}$"},
        "country": {"enum": ["US", "FR", "DE", "JP", "BR"]}},
        "required": ["street", "city", "postal_code", "country"], "additionalProperties": False},
    "product": {"type": "object", "properties": {
        "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"}, "title": {"type": "string", "maxLength": 60},
        "price": {"type": "number", "minimum": 0}, "in_stock": {"type": "boolean"},
        "tags": {"type": "array", "items": _STR, "maxItems": 5}},
        "required": ["sku", "title", "price", "in_stock"], "additionalProperties": False},
    "event": {"type": "object", "properties": {
        "title": _STR, "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
        "attendees": {"type": "array", "items": {"type": "object", "properties": {"name": _STR, "role": {
            "enum": ["host", "guest", "speaker"]}}, "required": ["name", "role"], "additionalProperties": False},
            "minItems": 1, "maxItems": 4}},
        "required": ["title", "date", "attendees"], "additionalProperties": False},
    "recipe": {"type": "object", "properties": {
        "name": _STR, "servings": {"type": "integer", "minimum": 1, "maximum": 12},
        "ingredients": {"type": "array", "items": {"type": "object", "properties": {
            "item": _STR, "grams": {"type": "number", "minimum": 0}}, "required": ["item", "grams"],
            "additionalProperties": False}, "minItems": 1, "maxItems": 6},
        "vegetarian": {"type": "boolean"}},
        "required": ["name", "servings", "ingredients", "vegetarian"], "additionalProperties": False},
    "weather": {"type": "object", "properties": {
        "city": _STR, "temperature_c": {"type": "number", "minimum": -90, "maximum": 60},
        "condition": {"enum": ["sunny", "cloudy", "rain", "snow", "storm"]},
        "wind_kmh": {"type": "integer", "minimum": 0, "maximum": 400}},
        "required": ["city", "temperature_c", "condition"], "additionalProperties": False},
    "sentiment": {"type": "object", "properties": {
        "label": {"enum": ["positive", "negative", "neutral"]}, "confidence": {"type": "number", "minimum": 0,
                                                                               "maximum": 1}},
        "required": ["label", "confidence"], "additionalProperties": False},
    "task_list": {"type": "object", "properties": {"tasks": {"type": "array", "items": {
        "type": "object", "properties": {"id": _INT, "text": {"type": "string", "maxLength": 80},
                                         "done": {"type": "boolean"}},
        "required": ["id", "text", "done"], "additionalProperties": False}, "minItems": 1, "maxItems": 5}},
        "required": ["tasks"], "additionalProperties": False},
    "contact_or_company": {"type": "object", "properties": {"entity": {"anyOf": [
        {"type": "object", "properties": {"kind": {"const": "person"}, "name": _STR}, "required": ["kind", "name"],
         "additionalProperties": False},
        {"type": "object", "properties": {"kind": {"const": "company"}, "name": _STR, "employees": _INT},
         "required": ["kind", "name", "employees"], "additionalProperties": False}]}},
        "required": ["entity"], "additionalProperties": False},
    "book": {"type": "object", "properties": {
        "title": _STR, "author": {"type": "object", "properties": {"first": _STR, "last": _STR},
                                  "required": ["first", "last"], "additionalProperties": False},
        "year": {"type": "integer", "minimum": 1400, "maximum": 2030}, "genres": {"type": "array", "items": {
            "enum": ["fiction", "science", "history", "poetry", "children"]}, "maxItems": 3},
        "isbn": {"type": ["string", "null"]}},
        "required": ["title", "author", "year", "genres"], "additionalProperties": False},
}

_PROMPTS: dict[str, list[str]] = {
    "person": ["Describe a fictional software engineer.", "Give me a person from a history book.",
               "Invent a character for a children's story.", "Who is a typical marathon runner?",
               "Create a profile for a new library member."],
    "address": ["Where is the Eiffel Tower?", "Give the address of a bakery in Berlin.",
                "Make up an address in Tokyo.", "Write the address of a small US post office.",
                "Where could a Brazilian football club be located?"],
    "product": ["List a laptop for an online shop.", "Describe a coffee mug product.",
                "Create a catalog entry for running shoes.", "Add a board game to the inventory.",
                "Describe a refurbished phone for sale."],
    "event": ["Plan a team meeting for next week.", "Describe a birthday party.", "Organize a small conference talk.",
              "Schedule a book club evening.", "Set up a product launch event."],
    "recipe": ["Give me a pancake recipe.", "A quick vegetarian dinner, please.", "How do I make guacamole?",
               "Write a recipe for tomato soup.", "A dessert for six people."],
    "weather": ["What is the weather in Oslo today?", "Report the weather in Cairo.", "Weather for Lima, please.",
                "Describe a stormy day in Miami.", "Is it snowing in Montreal?"],
    "sentiment": ["Classify: 'I love this phone, it is fantastic.'", "Classify: 'The service was terribly slow.'",
                  "Classify: 'The package arrived on Tuesday.'", "Classify: 'Best concert of my life!'",
                  "Classify: 'Not sure how I feel about the ending.'"],
    "task_list": ["Make a to-do list for moving house.", "Tasks to prepare a presentation.",
                  "What should I do before a long trip?", "List chores for a Saturday morning.",
                  "Plan the steps to learn to swim."],
    "contact_or_company": ["Who makes the iPhone?", "Tell me about a freelance designer.",
                           "Describe a local bakery business.", "Name a famous physicist.",
                           "Describe a large car manufacturer."],
    "book": ["Describe a classic novel.", "Recommend a science book.", "Tell me about a poetry collection.",
             "Describe a history book about Rome.", "Recommend a book for children."],
}


def cases() -> list[tuple[str, dict[str, Any]]]:
    """The fifty (prompt, schema) pairs, schema-major."""
    return [(prompt, SCHEMAS[name]) for name in SCHEMAS for prompt in _PROMPTS[name]]
