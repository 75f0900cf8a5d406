"""Assemble a node agent from its config: the agent plus every component, in start order."""

from __future__ import annotations

from pymosix.agent import NodeAgent
from pymosix.balancer import Balancer
from pymosix.config import NodeConfig
from pymosix.load.component import LoadComponent
from pymosix.load.speedwatch import NodeState, SpeedWatch
from pymosix.metrics import MetricsEndpoint
from pymosix.migration.engine import MigrationEngine
from pymosix.pool import PoolViews
from pymosix.priority import run_above_jobs


def build_agent(config: NodeConfig) -> NodeAgent:
    """The agent with its components; each is started in this order and stopped in reverse."""
    config.state_dir.mkdir(parents=True, exist_ok=True)
    run_above_jobs(config.agent_nice)  # before the speed measurement, which wants the CPU too
    agent = NodeAgent(config)
    load = LoadComponent(agent)
    agent.add_component(load)
    engine = MigrationEngine(agent, load)
    agent.add_component(engine)
    agent.add_component(PoolViews(agent, engine))
    agent.add_component(Balancer(agent, load, engine))
    if agent.speed_measured:

        def node_state() -> NodeState:
            return NodeState(load.util, sum(load.job_counts()), agent.flags.speed)

        def set_speed(speed: int) -> None:
            agent.flags.speed = speed

        agent.add_component(SpeedWatch(config.speed_recheck_s, node_state, set_speed, agent.now))
    if config.metrics_port:
        agent.add_component(MetricsEndpoint(agent, load, engine))
    if config.web_port:
        from pymosix.web.server import WebMonitor

        agent.add_component(WebMonitor(agent, load, engine))
    return agent
