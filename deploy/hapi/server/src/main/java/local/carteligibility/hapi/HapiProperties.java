package local.carteligibility.hapi;

import java.util.ArrayList;
import java.util.List;
import org.springframework.boot.context.properties.ConfigurationProperties;

/**
 * The server knobs we expose under {@code hapi.fhir.*} (names follow the HAPI JPA starter's
 * application.yaml so its documentation applies). Defaults suit a throw-away test server.
 */
@ConfigurationProperties(prefix = "hapi.fhir")
public class HapiProperties {

	private int defaultPageSize = 20;
	private int maxPageSize = 200;
	private boolean allowExternalReferences = true;
	private boolean allowMultipleDelete = true;
	private boolean expungeEnabled = true;
	private boolean deleteExpungeEnabled = true;
	private boolean enforceReferentialIntegrityOnWrite = false;
	private boolean autoCreatePlaceholderReferenceTargets = false;
	private long reuseCachedSearchResultsMillis = 0;
	private long retainCachedSearchesMins = 60;
	private List<Integer> searchPrefetchThresholds = new ArrayList<>(List.of(13, 503, 2003, -1));
	private boolean prettyPrint = false;
	private boolean daoSchedulingEnabled = true;
	/** Bulk Data $export (system, Patient and Group level); off unless configured, as in HAPI. */
	private boolean bulkExportEnabled = false;
	/** R4 Subscriptions (hapi.fhir.subscription.*, as in the JPA starter). */
	private Subscription subscription = new Subscription();
	/** Fixed base URL for links (e.g. behind a proxy); empty means derive from the request. */
	private String serverAddress = "";

	public int getDefaultPageSize() {
		return defaultPageSize;
	}

	public void setDefaultPageSize(int value) {
		defaultPageSize = value;
	}

	public int getMaxPageSize() {
		return maxPageSize;
	}

	public void setMaxPageSize(int value) {
		maxPageSize = value;
	}

	public boolean isAllowExternalReferences() {
		return allowExternalReferences;
	}

	public void setAllowExternalReferences(boolean value) {
		allowExternalReferences = value;
	}

	public boolean isAllowMultipleDelete() {
		return allowMultipleDelete;
	}

	public void setAllowMultipleDelete(boolean value) {
		allowMultipleDelete = value;
	}

	public boolean isExpungeEnabled() {
		return expungeEnabled;
	}

	public void setExpungeEnabled(boolean value) {
		expungeEnabled = value;
	}

	public boolean isDeleteExpungeEnabled() {
		return deleteExpungeEnabled;
	}

	public void setDeleteExpungeEnabled(boolean value) {
		deleteExpungeEnabled = value;
	}

	public boolean isEnforceReferentialIntegrityOnWrite() {
		return enforceReferentialIntegrityOnWrite;
	}

	public void setEnforceReferentialIntegrityOnWrite(boolean value) {
		enforceReferentialIntegrityOnWrite = value;
	}

	public boolean isAutoCreatePlaceholderReferenceTargets() {
		return autoCreatePlaceholderReferenceTargets;
	}

	public void setAutoCreatePlaceholderReferenceTargets(boolean value) {
		autoCreatePlaceholderReferenceTargets = value;
	}

	public long getReuseCachedSearchResultsMillis() {
		return reuseCachedSearchResultsMillis;
	}

	public void setReuseCachedSearchResultsMillis(long value) {
		reuseCachedSearchResultsMillis = value;
	}

	public long getRetainCachedSearchesMins() {
		return retainCachedSearchesMins;
	}

	public void setRetainCachedSearchesMins(long value) {
		retainCachedSearchesMins = value;
	}

	public List<Integer> getSearchPrefetchThresholds() {
		return searchPrefetchThresholds;
	}

	public void setSearchPrefetchThresholds(List<Integer> value) {
		searchPrefetchThresholds = value;
	}

	public boolean isPrettyPrint() {
		return prettyPrint;
	}

	public void setPrettyPrint(boolean value) {
		prettyPrint = value;
	}

	public boolean isDaoSchedulingEnabled() {
		return daoSchedulingEnabled;
	}

	public void setDaoSchedulingEnabled(boolean value) {
		daoSchedulingEnabled = value;
	}

	public String getServerAddress() {
		return serverAddress;
	}

	public void setServerAddress(String value) {
		serverAddress = value;
	}

	public boolean isBulkExportEnabled() {
		return bulkExportEnabled;
	}

	public void setBulkExportEnabled(boolean value) {
		bulkExportEnabled = value;
	}

	public Subscription getSubscription() {
		return subscription;
	}

	public void setSubscription(Subscription value) {
		subscription = value;
	}

	/** hapi.fhir.subscription.*: off unless configured, as in HAPI. */
	public static class Subscription {
		private boolean resthookEnabled = false;
		/** How often HAPI's scheduled jobs activate subscriptions and submit changes. */
		private long pollingIntervalMs = 5_000;
		/** Submit a change for matching at once rather than on the next scheduled pass. */
		private boolean immediatelyQueued = false;

		public boolean isResthookEnabled() {
			return resthookEnabled;
		}

		public void setResthookEnabled(boolean value) {
			resthookEnabled = value;
		}

		public long getPollingIntervalMs() {
			return pollingIntervalMs;
		}

		public void setPollingIntervalMs(long value) {
			pollingIntervalMs = value;
		}

		public boolean isImmediatelyQueued() {
			return immediatelyQueued;
		}

		public void setImmediatelyQueued(boolean value) {
			immediatelyQueued = value;
		}
	}
}
