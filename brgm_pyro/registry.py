"""A tiny name -> factory registry, so that adding a prior, corruption, guide or sampler is one
new file plus one ``@REGISTRY.register("name")`` line.

``register(name, example=fn)`` also records how to build a small instance for the contract tests
(``tests/test_contracts.py``): every registered component is tested by being registered, and one
whose factory needs arguments must give an example (the tests fail otherwise).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Generic, Optional, TypeVar

from brgm_pyro.errors import BRGMError

T = TypeVar("T")


class Registry(Generic[T]):
    """Factories by name. ``default_traits``: what :meth:`traits` answers for an entry registered
    without its own (e.g. :class:`~brgm_pyro.inference.traits.MethodTraits` for the inference methods)."""

    def __init__(self, kind: str, default_traits: Any = None) -> None:
        self.kind = kind
        self._items: Dict[str, Callable[..., T]] = {}
        self._examples: Dict[str, Callable[..., T]] = {}
        self._traits: Dict[str, Any] = {}
        self._default_traits = default_traits

    def register(self, name: str, example: Optional[Callable[..., T]] = None, traits: Any = None
                 ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering ``factory`` as ``name``; ``traits``: what it can do (read by the CLI)."""
        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = factory
            if example is not None:
                self._examples[name] = example
            if traits is not None:
                self._traits[name] = traits
            return factory

        return deco

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that register a throw-away entry)."""
        self._items.pop(name, None)
        self._examples.pop(name, None)
        self._traits.pop(name, None)

    def traits(self, name: str) -> Any:
        """The traits registered with ``name`` (the registry's default if none were given)."""
        self.get(name)
        return self._traits.get(name, self._default_traits)

    def example(self, name: str) -> Optional[Callable[..., T]]:
        """The small-instance builder registered with ``name`` (None if none was given)."""
        self.get(name)
        return self._examples.get(name)

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._items[name]
        except KeyError:
            raise BRGMError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self._items))}"
            ) from None

    def build(self, name: str, *args, **kwargs) -> T:
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
