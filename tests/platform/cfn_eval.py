"""A small CloudFormation evaluator: a decoded template's intrinsic functions resolved for given parameters.

Enough to read a template as data, as CloudFormation would create it: `Ref`, `Fn::GetAtt`, `Fn::Sub`,
`Fn::Join`, `Fn::Split`, `Fn::Select`, `Fn::If`, and conditions made of `Fn::Equals` and `Fn::Not`. Resources and outputs
whose Condition does not hold are left out. A resource's `Ref` becomes `<Logical>` and an attribute
`<Logical>.<Attr>`, so tests compare logical ids rather than names CloudFormation would make up. Any other
function is refused, so a template it cannot read is never taken as meaning something else. (cfn-lint resolves
functions only inside its rules; no installed library evaluates a whole template.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

Template = dict[str, Any]

_NO_VALUE = object()  # AWS::NoValue: the key or list item is left out


class UnsupportedFunctionError(ValueError):
    """The template uses an intrinsic function or condition this evaluator does not know."""


def evaluate(template: Template, names: Mapping[str, str]) -> Template:
    """`template` with every intrinsic function evaluated, `names` giving the parameters' and pseudo parameters'
    values, and without the resources and outputs whose Condition does not hold."""
    evaluated = dict(template)  # Parameters and Conditions as written
    for section in ("Resources", "Outputs"):
        evaluated[section] = {
            name: resolve(item, template, names)
            for name, item in template.get(section, {}).items()
            if "Condition" not in item or holds(template["Conditions"][item["Condition"]], template, names)
        }
    return evaluated


def parameter_values(template: Template, given: Mapping[str, str]) -> dict[str, str]:
    """Each parameter's default as a string (as CloudFormation passes it), then the values `given`."""
    defaults = {k: str(v.get("Default", "")) for k, v in template.get("Parameters", {}).items()}
    return defaults | dict(given)


def resolve(node: Any, template: Template, names: Mapping[str, str]) -> Any:
    """`node` with its intrinsic functions evaluated; resources become `<Logical>` / `<Logical>.<Attr>`."""
    if isinstance(node, list):
        return [v for v in (resolve(n, template, names) for n in node) if v is not _NO_VALUE]
    if not isinstance(node, dict):
        return node
    functions = [key for key in node if key == "Ref" or key.startswith("Fn::")]
    if not functions:
        resolved = {k: resolve(v, template, names) for k, v in node.items()}
        return {k: v for k, v in resolved.items() if v is not _NO_VALUE}
    if len(node) != 1:
        raise UnsupportedFunctionError(f"expected a function alone in its mapping, got keys {sorted(node)}")
    ((function, args),) = node.items()
    if function == "Ref":
        return _NO_VALUE if args == "AWS::NoValue" else names.get(args, f"<{args}>")
    if function == "Fn::GetAtt":
        return f"<{'.'.join(args) if isinstance(args, list) else args}>"
    if function == "Fn::Sub":
        text, extra = (args, {}) if isinstance(args, str) else args
        scope = {**names, **{k: resolve(v, template, names) for k, v in extra.items()}}
        return re.sub(r"\$\{([^}]+)\}", lambda m: scope.get(m[1], f"<{m[1]}>"), text)
    if function == "Fn::Join":
        separator, values = args
        return separator.join(resolve(values, template, names))
    if function == "Fn::Split":
        separator, value = args
        return resolve(value, template, names).split(separator)
    if function == "Fn::Select":
        index, values = args
        return resolve(values, template, names)[int(index)]
    if function == "Fn::If":
        condition, yes, no = args
        chosen = yes if holds(template["Conditions"][condition], template, names) else no
        return resolve(chosen, template, names)
    raise UnsupportedFunctionError(f"expected a function this evaluator knows, got {function}")


def holds(condition: Mapping[str, Any], template: Template, names: Mapping[str, str]) -> bool:
    """Whether a condition (`Fn::Equals`, `Fn::Not`, or a named one by `Condition`) holds for `names`."""
    ((function, args),) = condition.items()
    if function == "Fn::Not":
        return not holds(args[0], template, names)
    if function == "Fn::Equals":
        left, right = (resolve(a, template, names) for a in args)
        return bool(left == right)
    if function == "Condition":
        return holds(template["Conditions"][args], template, names)
    raise UnsupportedFunctionError(
        f"expected Fn::Not, Fn::Equals or Condition in a condition, got {function}"
    )


def resources(stack: Template, kind: str) -> dict[str, dict[str, Any]]:
    """Logical id → properties of every resource of type `kind`."""
    return {name: r["Properties"] for name, r in stack["Resources"].items() if r["Type"] == kind}
