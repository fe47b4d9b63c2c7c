-- secure-monitor storage schema, version 4 (MariaDB 10.5+ / MySQL 8).
-- Applied by `python -m storage init-db --config COLLECTOR_CONFIG`, or on the collector's first write.
-- Every statement is idempotent; statements are separated by a semicolon at the end of a line.
-- Timestamps are Unix seconds (UTC) as DOUBLE, exactly the float the collector stored, so that a
-- replayed sample matches its first copy in the primary key and is stored once.

CREATE TABLE IF NOT EXISTS `schema_version` (
    `version` INT NOT NULL PRIMARY KEY,
    `applied_at` DOUBLE NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- One row per successful poll. The primary key (agent, timestamp) makes replays idempotent and
-- clusters an agent's rows by time (viz: one agent over a range); ix_metrics_time serves the
-- whole fleet over a range. details holds {"findings": [...], "extra": {...}} when either is non-empty.
CREATE TABLE IF NOT EXISTS `metrics` (
    `agent` VARCHAR(64) NOT NULL,
    `timestamp` DOUBLE NOT NULL,
    -- METRIC COLUMNS: one per numeric metric of storage/catalog.py, in its order, written in here by
    -- storage.mysql.schema_statements (and added to an older table by the store when missing)
    `threat_level` ENUM('none', 'low', 'medium', 'high') NOT NULL DEFAULT 'none',
    `temperature_reason` VARCHAR(256) NULL,
    `details` LONGTEXT NULL CHECK (`details` IS NULL OR JSON_VALID(`details`)),
    PRIMARY KEY (`agent`, `timestamp`),
    KEY `ix_metrics_time` (`timestamp`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Threshold and security transitions; a replayed alert has the same key and is stored once.
CREATE TABLE IF NOT EXISTS `alerts` (
    `agent` VARCHAR(64) NOT NULL,
    `timestamp` DOUBLE NOT NULL,
    `metric` VARCHAR(64) NOT NULL,
    `value` DOUBLE NULL,
    `threshold` DOUBLE NULL,
    `severity` ENUM('info', 'warning', 'critical') NOT NULL,
    `state` ENUM('firing', 'cleared') NOT NULL DEFAULT 'firing',
    `technique` VARCHAR(32) NULL,
    `message` VARCHAR(512) NOT NULL DEFAULT '',
    PRIMARY KEY (`agent`, `timestamp`, `metric`, `state`),
    KEY `ix_alerts_time` (`timestamp`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- The outcome of every poll attempt (up, unreachable, timeout, tls_failure, ...).
CREATE TABLE IF NOT EXISTS `agent_status` (
    `agent` VARCHAR(64) NOT NULL,
    `timestamp` DOUBLE NOT NULL,
    `state` ENUM('up', 'unreachable', 'timeout', 'tls_failure', 'auth_refused', 'rate_limited',
                 'bad_response', 'audit_broken') NOT NULL,
    `detail` VARCHAR(256) NOT NULL DEFAULT '',
    `latency_ms` DOUBLE NULL,
    PRIMARY KEY (`agent`, `timestamp`),
    KEY `ix_agent_status_time` (`timestamp`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Version 1 databases: the state an agent has while its audit chain is broken.
ALTER TABLE `agent_status` MODIFY `state` ENUM('up', 'unreachable', 'timeout', 'tls_failure', 'auth_refused',
    'rate_limited', 'bad_response', 'audit_broken') NOT NULL;

-- The central copies of the agents' audit logs: each record's line exactly as the agent wrote it, in
-- chain order (id). copy_id numbers an agent's copies: a chain break closes the current one (never
-- written again) and the next record starts copy_id + 1, whose first row holds copy_started (the time of
-- the break). (agent, copy_id, hash) is unique, so a replay stores a record once.
CREATE TABLE IF NOT EXISTS `audit_records` (
    `id` BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    `agent` VARCHAR(64) NOT NULL,
    `copy_id` INT UNSIGNED NOT NULL,
    `seq` BIGINT UNSIGNED NOT NULL,
    `hash` CHAR(64) NOT NULL,
    `prev` CHAR(64) NOT NULL,
    `time` VARCHAR(32) NOT NULL,
    `line` TEXT NOT NULL,
    `copy_started` DOUBLE NULL,
    PRIMARY KEY (`id`),
    UNIQUE KEY `ux_audit_records_copy_hash` (`agent`, `copy_id`, `hash`),
    KEY `ix_audit_records_agent` (`agent`, `id`)
) ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_bin;

-- Version 3: trend rollups per agent and bucket (storage/trends.py), 5 minutes and 1 hour: primary key
-- (agent, bucket), per metric its mean, min, max and value count, stored sparse (storage/mysqltrends.py).
-- TREND TABLES: written in here by storage.mysql.schema_statements from storage/catalog.py

INSERT IGNORE INTO `schema_version` (`version`, `applied_at`) VALUES (1, UNIX_TIMESTAMP());
INSERT IGNORE INTO `schema_version` (`version`, `applied_at`) VALUES (2, UNIX_TIMESTAMP());
INSERT IGNORE INTO `schema_version` (`version`, `applied_at`) VALUES (3, UNIX_TIMESTAMP());
-- 4: trends_6h (6-hour rollups, merged from trends_1h)
INSERT IGNORE INTO `schema_version` (`version`, `applied_at`) VALUES (4, UNIX_TIMESTAMP());
